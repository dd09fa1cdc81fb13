// The subject scheme, in one place. Every id that becomes a subject token is validated first (events/fields.ts:
// ids are [A-Za-z0-9_-], so no '.', '*', '>' or whitespace can reach a subject).
//
//   nf.evt.cell.<cellId>          cell registration                    (stream NF_EVENTS)
//   nf.evt.app.<appId>            app lifecycle events                 (stream NF_EVENTS)
//   nf.evt.container.<containerId> container lifecycle events           (stream NF_EVENTS)
//   nf.evt.policy.<sourceAppId>   policy events of one source app      (stream NF_EVENTS)
//   nf.evt.asg.<groupId>          one application security group       (stream NF_EVENTS)
//   nf.cmd.<caller>.<aggregate>.<verb>  platform intake, request/reply  (core NATS, queue group policy-writer)
//   nf.cell.snap|delta|state.<cellId>  the cell stream: see projections/cell-stream.ts, which owns it

export const EVENTS_STREAM = 'NF_EVENTS';
export const EVENT_SUBJECTS = 'nf.evt.>';

export const eventSubject = {
  cell: (cellId: string) => `nf.evt.cell.${cellId}`,
  app: (appId: string) => `nf.evt.app.${appId}`,
  container: (containerId: string) => `nf.evt.container.${containerId}`,
  policy: (sourceAppId: string) => `nf.evt.policy.${sourceAppId}`,
  securityGroup: (groupId: string) => `nf.evt.asg.${groupId}`,
} as const;

/**
 * Platform intake: request/reply on `nf.cmd.<caller>.<aggregate>.<verb>`. The caller token names the platform
 * component sending the command; the writer records it as the event's actor (`platform:<caller>`) — never a field of
 * the body. With authorization on, a component's NATS user may publish only under its own caller token, so the
 * actor is the connection's identity.
 */
export const intakeCommand = {
  registerCell: 'cell.register',
  decommissionCell: 'cell.decommission',
  registerApp: 'app.register',
  renameApp: 'app.rename',
  deleteApp: 'app.delete',
  startContainer: 'container.start',
  stopContainer: 'container.stop',
} as const;

export type IntakeCommandName = (typeof intakeCommand)[keyof typeof intakeCommand];

/** The subject a caller sends a command to (the caller is a validated id: no '.', '*' or '>'). */
export const intakeSubject = (caller: string, command: IntakeCommandName): string => `nf.cmd.${caller}.${command}`;

/** Every command of one caller: what a platform component's NATS user may publish. */
export const intakeSubjectsOf = (caller: string): string => `nf.cmd.${caller}.>`;

/**
 * Several commands in one request (`nf.cmd.<caller>.commands.batch`, body `{"commands":[{"command","body"}]}`), one
 * reply with a result per command, in order: what a platform component reporting many changes at once sends
 * (services/policy-writer/intake.ts).
 */
export const INTAKE_BATCH = 'commands.batch';

/** The subject a caller sends a batch of commands to. */
export const intakeBatchSubject = (caller: string): string => `nf.cmd.${caller}.${INTAKE_BATCH}`;

/** What the writer subscribes to: every caller's commands. */
export const INTAKE_SUBJECTS = 'nf.cmd.*.*.*';

const INTAKE_COMMAND_NAMES: ReadonlySet<string> = new Set(Object.values(intakeCommand));

/** Is this one of the intake commands' names (`container.start`, …)? */
export const isIntakeCommandName = (name: unknown): name is IntakeCommandName => typeof name === 'string' && INTAKE_COMMAND_NAMES.has(name);

/** The caller and command (or the batch) of an intake subject; undefined for anything else. */
export function parseIntakeSubject(subject: string): { caller: string; command: IntakeCommandName | typeof INTAKE_BATCH } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 5 || parts[0] !== 'nf' || parts[1] !== 'cmd') return undefined;
  const command = `${parts[3]}.${parts[4]}`;
  if (command === INTAKE_BATCH) return { caller: parts[2]!, command };
  return isIntakeCommandName(command) ? { caller: parts[2]!, command } : undefined;
}

export const INTAKE_QUEUE = 'policy-writer';

// The cell stream's subjects (nf.cell.snap|delta|state.<cellId>) and streams are owned by projections/cell-stream.ts.

/** Planner instances announce themselves here (KV bucket; entries expire when an instance stops heartbeating). */
export const PLANNER_MEMBERS_BUCKET = 'netfold-planners';
/** Planner checkpoints (object store: checkpoints are larger than one message). */
export const PLANNER_CHECKPOINT_BUCKET = 'netfold-planner-checkpoints';

/** Each cell agent's status: applied revision and hash, rule counts, last apply, drift repairs, errors. */
export const CELL_STATUS_BUCKET = 'netfold-cell-status';
/** Discovery records: per cell, its local names and IPs, re-put on every heartbeat. */
export const DISCOVERY_BUCKET = 'netfold-discovery';

/** Ready gate: request/reply to a cell's agent — "is the policy for container C in place here?" */
export const readySubject = (cellId: string) => `nf.ready.${cellId}`;
