// The subject scheme, in one place. Every id that becomes a subject token is validated first (events/fields.ts:
// ids are [A-Za-z0-9_-], so no '.', '*', '>' or whitespace can reach a subject).
//
//   nf.evt.cell.<cellId>          cell registration                    (stream NF_EVENTS)
//   nf.evt.app.<appId>            app lifecycle events                 (stream NF_EVENTS)
//   nf.evt.container.<containerId> container lifecycle events           (stream NF_EVENTS)
//   nf.evt.policy.<sourceAppId>   policy events of one source app      (stream NF_EVENTS)
//   nf.cmd.<aggregate>.<verb>     platform intake, request/reply        (core NATS, queue group policy-writer)
//   nf.cell.snap.<cellId>         a cell's latest full desired state    (stream NF_CELL_SNAPSHOTS, 1 per subject)
//   nf.cell.delta.<cellId>        a cell's recent changes               (stream NF_CELL_DELTAS, last N per subject)
//   nf.cell.state.<cellId>        a cell's current state, on request    (core NATS, answered by the owning planner)

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

export type IntakeSubject = (typeof intakeSubject)[keyof typeof intakeSubject];

export const INTAKE_QUEUE = 'policy-writer';

export const CELL_SNAPSHOTS_STREAM = 'NF_CELL_SNAPSHOTS';
export const CELL_DELTAS_STREAM = 'NF_CELL_DELTAS';

export const cellSubject = {
  snapshot: (cellId: string) => `nf.cell.snap.${cellId}`,
  delta: (cellId: string) => `nf.cell.delta.${cellId}`,
  allSnapshots: 'nf.cell.snap.*',
  allDeltas: 'nf.cell.delta.*',
  /** Request/reply: the owning planner answers with the cell's current state (what a polling agent pulls). */
  state: (cellId: string) => `nf.cell.state.${cellId}`,
  allStates: 'nf.cell.state.*',
} as const;

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
