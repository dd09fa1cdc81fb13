// The subject scheme, in one place. Every id that becomes a subject token is validated first (events/fields.ts:
// ids are [A-Za-z0-9_-], so no '.', '*', '>' or whitespace can reach a subject).
//
//   nf.evt.app.<appId>            app lifecycle events                 (stream NF_EVENTS)
//   nf.evt.container.<containerId> container lifecycle events           (stream NF_EVENTS)
//   nf.evt.policy.<sourceAppId>   policy events of one source app      (stream NF_EVENTS)
//   nf.cmd.<aggregate>.<verb>     platform intake, request/reply        (core NATS, queue group policy-writer)

export const EVENTS_STREAM = 'NF_EVENTS';
export const EVENT_SUBJECTS = 'nf.evt.>';

export const eventSubject = {
  app: (appId: string) => `nf.evt.app.${appId}`,
  container: (containerId: string) => `nf.evt.container.${containerId}`,
  policy: (sourceAppId: string) => `nf.evt.policy.${sourceAppId}`,
} as const;

export const intakeSubject = {
  registerApp: 'nf.cmd.app.register',
  renameApp: 'nf.cmd.app.rename',
  deleteApp: 'nf.cmd.app.delete',
  startContainer: 'nf.cmd.container.start',
  stopContainer: 'nf.cmd.container.stop',
} as const;

export type IntakeSubject = (typeof intakeSubject)[keyof typeof intakeSubject];

export const INTAKE_QUEUE = 'policy-writer';
