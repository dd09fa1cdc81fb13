// The decider of application security groups: pure, from a command and the group's state to the events that
// record it. Writes are for admins only (Cloud Foundry: admin); a repeat decides nothing and says why.
import type { DomainEvent } from '../../events/catalogue.ts';
import { type EgressRule, type SecurityGroupCommand, LIFECYCLES } from '../../events/security-groups.ts';
import type { SecurityGroupRecord } from '../../projections/model.ts';
import type { Access, Decision } from './decide.ts';

export type SecurityGroupDecisionState = {
  access: Access;
  group: SecurityGroupRecord | undefined;
  /** The live group holding the command's name, if any (create, or an update that renames). */
  nameOwner: string | undefined;
};

const accept = (events: DomainEvent[], note?: string): Decision => (note ? { ok: true, events, note } : { ok: true, events });
const reject = (status: 403 | 404 | 422, code: string, message: string): Decision => ({ ok: false, rejection: { status, code, message } });

const sameRules = (a: readonly EgressRule[], b: readonly EgressRule[]) => JSON.stringify(a) === JSON.stringify(b);

export function decideSecurityGroup(cmd: SecurityGroupCommand, s: SecurityGroupDecisionState): Decision {
  if (!s.access.admin) return reject(403, 'admin-only', 'changing security groups needs the network.admin scope');
  const { group } = s;
  const id = cmd.data.groupId;
  const notFound = () => reject(404, 'security-group-not-found', `security group ${id} not found`);
  const nameTaken = (name: string) => reject(422, 'security-group-name-taken', `Security group with name '${name}' already exists.`);
  switch (cmd.type) {
    case 'CreateSecurityGroup': {
      const d = cmd.data;
      if (group) return accept([], 'already-created');
      if (s.nameOwner !== undefined && s.nameOwner !== id) return nameTaken(d.name);
      return accept([
        {
          type: 'SecurityGroupCreated',
          v: 1,
          data: {
            groupId: id,
            name: d.name,
            rules: d.rules,
            globallyEnabled: d.globallyEnabled,
            runningSpaces: d.runningSpaces,
            stagingSpaces: d.stagingSpaces,
          },
        },
      ]);
    }
    case 'UpdateSecurityGroup': {
      if (!group) return notFound();
      const d = cmd.data;
      const name = d.name ?? group.name;
      if (name !== group.name && s.nameOwner !== undefined && s.nameOwner !== id) return nameTaken(name);
      const rules = d.rules ?? group.rules;
      const globallyEnabled = {
        running: d.globallyEnabled?.running ?? group.globallyEnabled.running,
        staging: d.globallyEnabled?.staging ?? group.globallyEnabled.staging,
      };
      const unchanged = name === group.name && sameRules(rules, group.rules) && LIFECYCLES.every((l) => globallyEnabled[l] === group.globallyEnabled[l]);
      if (unchanged) return accept([], 'unchanged');
      return accept([{ type: 'SecurityGroupUpdated', v: 1, data: { groupId: id, name, rules, globallyEnabled } }]);
    }
    case 'DeleteSecurityGroup': {
      if (!group) return notFound();
      return accept([{ type: 'SecurityGroupDeleted', v: 1, data: { groupId: id, name: group.name } }]);
    }
    case 'BindSecurityGroup': {
      if (!group) return notFound();
      const fresh = cmd.data.spaceIds.filter((sp) => !group.spaces[cmd.data.lifecycle][sp]);
      if (fresh.length === 0) return accept([], 'already-bound');
      return accept([{ type: 'SecurityGroupSpacesBound', v: 1, data: { groupId: id, lifecycle: cmd.data.lifecycle, spaceIds: fresh } }]);
    }
    case 'UnbindSecurityGroup': {
      if (!group) return notFound();
      const bound = cmd.data.spaceIds.filter((sp) => group.spaces[cmd.data.lifecycle][sp]);
      if (bound.length === 0) return accept([], 'not-bound');
      return accept([{ type: 'SecurityGroupSpacesUnbound', v: 1, data: { groupId: id, lifecycle: cmd.data.lifecycle, spaceIds: bound } }]);
    }
    default: {
      const never: never = cmd;
      return never;
    }
  }
}
