// JSON Schemas of the gateway's requests and responses: what the gateway validates with (fastify, through
// openapi.ts) and what /openapi.json publishes. The domain parsers in events/commands.ts then read the validated
// bodies into commands (and check what a schema cannot say, such as ports.start <= ports.end).
import { PROTOCOLS } from '../../events/catalogue.ts';
import { ID_SCHEMA, type JsonSchema } from './openapi.ts';

export type { JsonSchema } from './openapi.ts';

const PORT = { type: 'integer', minimum: 1, maximum: 65535 } as const;

/** One Cloud Foundry policy. Tags are assigned by the server: a client may not send one. */
const CF_POLICY_SCHEMA: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source', 'destination'],
  properties: {
    source: { type: 'object', additionalProperties: false, required: ['id'], properties: { id: ID_SCHEMA } },
    destination: {
      type: 'object',
      additionalProperties: false,
      required: ['id', 'protocol', 'ports'],
      properties: {
        id: ID_SCHEMA,
        protocol: { type: 'string', enum: [...PROTOCOLS] },
        ports: { type: 'object', additionalProperties: false, required: ['start', 'end'], properties: { start: PORT, end: PORT }, description: 'start <= end' },
      },
    },
  },
};

/** `{ policies: [...] }`, 1 to `max` of them (`--max-policies-per-request`). */
export const cfPoliciesBody = (max: number): JsonSchema => ({
  type: 'object',
  additionalProperties: false,
  required: ['policies'],
  properties: { policies: { type: 'array', minItems: 1, maxItems: max, items: CF_POLICY_SCHEMA } },
});

/** A policy as the API answers it (tags as Cloud Foundry shows them are not part of netfold's answers). */
const CF_POLICY_OUT: JsonSchema = {
  type: 'object',
  required: ['source', 'destination'],
  properties: {
    source: { type: 'object', required: ['id'], properties: { id: { type: 'string' } } },
    destination: {
      type: 'object',
      required: ['id', 'protocol', 'ports'],
      properties: {
        id: { type: 'string' },
        protocol: { type: 'string', enum: [...PROTOCOLS] },
        ports: { type: 'object', required: ['start', 'end'], properties: { start: { type: 'integer' }, end: { type: 'integer' } } },
      },
    },
  },
};

export const REVISION_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['revision'],
  properties: { revision: { type: 'integer', description: 'the event-log sequence at which the requested state holds' } },
};

export const DRY_RUN_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['dry_run', 'revision', 'events', 'cells'],
  properties: {
    dry_run: { type: 'boolean', enum: [true] },
    revision: { type: 'integer', description: 'the revision the answer is computed on' },
    events: { type: 'array', description: 'the events the request would append', items: { type: 'object' } },
    cells: {
      type: 'object',
      description: 'per cell hosting an affected destination: the flows that would be allowed (added) and no longer allowed (removed)',
      additionalProperties: {
        type: 'object',
        required: ['added', 'removed'],
        properties: { added: { type: 'array', items: { type: 'string' } }, removed: { type: 'array', items: { type: 'string' } } },
      },
    },
  },
};

export const POLICY_LIST_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['total_policies', 'policies', 'revision'],
  properties: { total_policies: { type: 'integer' }, policies: { type: 'array', items: CF_POLICY_OUT }, revision: { type: 'integer' } },
};

/** A comma-separated list of ids (spaces around the commas allowed). */
const ID_LIST = (what: string) => ({
  type: 'string',
  pattern: `^\\s*${ID_SCHEMA.pattern.slice(1, -1)}(\\s*,\\s*${ID_SCHEMA.pattern.slice(1, -1)})*\\s*$`,
  description: `comma-separated ids: ${what}`,
});

export const POLICY_FILTER_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    id: ID_LIST('policies whose source or destination is one of them'),
    source_id: ID_LIST('policies from one of these apps'),
    dest_id: ID_LIST('policies to one of these apps'),
  },
};

export const DRY_RUN_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { dry_run: { type: 'boolean', description: 'true: validate, authorize and show per cell what would change; append nothing' } },
};

export const ENFORCEMENT_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['revision'],
  properties: {
    revision: { type: 'integer', minimum: 0, description: 'the revision to check' },
    wait_ms: { type: 'integer', minimum: 0, maximum: 60000, description: 'wait up to this long for it to be enforced (default 0)' },
  },
};

export const ENFORCEMENT_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['enforced', 'cells'],
  properties: {
    revision: { type: 'integer' },
    enforced: { type: 'boolean', description: 'every cell affected has applied at least this revision' },
    cells: {
      type: 'array',
      items: {
        type: 'object',
        properties: {
          cellId: { type: 'string' },
          planned: { type: 'integer' },
          required: { type: 'integer' },
          applied: { type: ['integer', 'null'] },
          ok: { type: 'boolean' },
          silent: { type: 'boolean' },
          lastHeard: { type: ['string', 'null'] },
        },
      },
    },
    plannersBehind: { type: 'array', items: { type: 'string' } },
    plannersStopped: { type: 'array', items: { type: 'string' } },
  },
};

export const TAGS_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['tags'],
  properties: {
    tags: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'tag', 'type'],
        properties: { id: { type: 'string' }, tag: { type: 'string' }, type: { type: 'string', enum: ['app'] } },
      },
    },
  },
};

export const APPLY_BODY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['document'],
  properties: { document: { type: 'string', description: 'the policy file, YAML or JSON (its format: docs/policy-files.md in the repository)' } },
};

export const APPLY_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    dry_run: { type: 'boolean', description: 'true: show per policy and per cell what would change; append nothing' },
    prune: { type: 'boolean', description: "true: also delete the policies of the file's spaces and source apps that the file does not have" },
  },
};

export const EXPORT_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { format: { type: 'string', enum: ['yaml', 'json'], description: 'yaml (default) or json' } },
};

const APP_REF = { type: 'object', required: ['id', 'name'], properties: { id: { type: 'string' }, name: { type: 'string' } } };

export const APPLY_RESULT_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['dry_run', 'revision', 'change_set', 'created', 'deleted', 'unchanged', 'changes'],
  properties: {
    dry_run: { type: 'boolean' },
    revision: { type: 'integer' },
    change_set: { type: 'string', description: 'the correlation id of every event of the change set' },
    created: { type: 'integer' },
    deleted: { type: 'integer' },
    unchanged: { type: 'integer' },
    changes: {
      type: 'array',
      items: {
        type: 'object',
        required: ['op', 'source', 'destination'],
        properties: {
          op: { type: 'string', enum: ['create', 'delete'] },
          source: APP_REF,
          destination: {
            type: 'object',
            properties: {
              ...APP_REF.properties,
              protocol: { type: 'string' },
              ports: { type: 'object', properties: { start: { type: 'integer' }, end: { type: 'integer' } } },
            },
          },
          line: { type: 'integer', description: 'where the file has it' },
        },
      },
    },
    cells: DRY_RUN_SCHEMA.properties && (DRY_RUN_SCHEMA.properties as Record<string, JsonSchema>).cells,
  },
};

export const APPS_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['revision', 'apps'],
  properties: {
    revision: { type: 'integer' },
    apps: {
      type: 'array',
      items: {
        type: 'object',
        required: ['id', 'name', 'space', 'instances', 'visible'],
        properties: {
          id: { type: 'string' },
          name: { type: 'string' },
          space: { type: 'string' },
          instances: { type: 'integer', description: 'running containers' },
          visible: { type: 'boolean', description: "false: not in the token's spaces, listed because a visible policy reaches it" },
        },
      },
    },
  },
};

export const CELLS_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['revision', 'cells'],
  properties: {
    revision: { type: 'integer', description: "the log's revision the writer has folded" },
    cells: {
      type: 'array',
      items: {
        type: 'object',
        required: ['cellId', 'planned', 'applied', 'lag'],
        properties: {
          cellId: { type: 'string' },
          subnet: { type: ['string', 'null'] },
          planned: { type: ['integer', 'null'], description: "the planner's latest revision for the cell" },
          applied: { type: ['integer', 'null'], description: "the revision the cell's agent enforces" },
          lag: { type: ['integer', 'null'], description: 'planned - applied (null: no agent has reported)' },
          appliedAt: { type: ['string', 'null'] },
          allows: { type: ['integer', 'null'] },
          error: { type: ['string', 'null'] },
        },
      },
    },
  },
};

export const EXPLAIN_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  required: ['source', 'destination', 'port'],
  properties: {
    source: { ...ID_SCHEMA, description: 'source app id or name' },
    destination: { ...ID_SCHEMA, description: 'destination app id or name' },
    port: { type: 'integer', minimum: 1, maximum: 65535 },
    protocol: { type: 'string', enum: [...PROTOCOLS], description: 'tcp (default) or udp' },
  },
};

const POLICY_RECORD = {
  type: 'object',
  properties: {
    sourceAppId: { type: 'string' },
    destAppId: { type: 'string' },
    protocol: { type: 'string' },
    startPort: { type: 'integer' },
    endPort: { type: 'integer' },
    createdAt: { type: 'string' },
    createdBy: { type: 'string' },
    createdSeq: { type: 'integer' },
  },
};

export const EXPLAIN_SCHEMA: JsonSchema = {
  type: 'object',
  required: ['allowed', 'reason', 'policies', 'nearMisses', 'cells', 'enforcement'],
  properties: {
    allowed: { type: 'boolean' },
    reason: { type: 'string' },
    policies: { type: 'array', items: POLICY_RECORD, description: 'the policies that allow it' },
    nearMisses: { type: 'array', items: POLICY_RECORD, description: 'policies between the two apps that do not cover the port or protocol' },
    cells: { type: 'array', items: { type: 'string' }, description: 'where the destination runs' },
    source: { type: 'string' },
    destination: { type: 'string' },
    port: { type: 'integer' },
    protocol: { type: 'string' },
    revision: { type: 'integer' },
    enforcement: {
      type: 'array',
      items: { type: 'object', properties: { cellId: { type: 'string' }, planned: { type: ['integer', 'null'] }, applied: { type: ['integer', 'null'] } } },
    },
  },
};

export const AUDIT_QUERY: JsonSchema = {
  type: 'object',
  additionalProperties: false,
  properties: { from: { type: 'integer', minimum: 1, description: 'the first revision to send (default: the last 20 changes)' } },
};
