// The subject scheme, in one place. Every id that becomes a subject token is validated first (events/fields.ts:
// ids are [A-Za-z0-9_-], so no '.', '*', '>' or whitespace can reach a subject).
//
//   nf.evt.cell.<cellId>          cell registration                    (stream NF_EVENTS)
//   nf.evt.app.<appId>            app lifecycle events                 (stream NF_EVENTS)
//   nf.evt.container.<containerId> container lifecycle events           (stream NF_EVENTS)
//   nf.evt.policy.<sourceAppId>   policy events of one source app      (stream NF_EVENTS)
//   nf.cmd.<aggregate>.<verb>     platform intake, request/reply        (core NATS, queue group policy-writer)
//   nf.cell.snap|delta|state.<cellId>  the cell stream: see projections/cell-stream.ts, which owns it

export const EVENTS_STREAM = 'NF_EVENTS';
export const EVENT_SUBJECTS = 'nf.evt.>';

export const eventSubject = {
  cell: (cellId: string) => `nf.evt.cell.${cellId}`,
  app: (appId: string) => `nf.evt.app.${appId}`,
  container: (containerId: string) => `nf.evt.container.${containerId}`,
  policy: (sourceAppId: string) => `nf.evt.policy.${sourceAppId}`,
} as const;

export const intakeSubject = {
  registerCell: 'nf.cmd.cell.register',
  decommissionCell: 'nf.cmd.cell.decommission',
  registerApp: 'nf.cmd.app.register',
  renameApp: 'nf.cmd.app.rename',
  deleteApp: 'nf.cmd.app.delete',
  startContainer: 'nf.cmd.container.start',
  stopContainer: 'nf.cmd.container.stop',
} as const;

/** Every intake subject: what a platform component may request and only the policy-writer may serve. */
export const INTAKE_SUBJECTS = 'nf.cmd.>';

export type IntakeSubject = (typeof intakeSubject)[keyof typeof intakeSubject];

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
