// Operators' and developers' verbs for application security groups (egress rules), and their audit lines.
import type { EventEnvelope } from '../events/catalogue.ts';

/** One line of what a security group event did. */
export function securityGroupEffect(e: EventEnvelope): string {
  switch (e.type) {
    case 'SecurityGroupCreated': {
      const d = e.data;
      const global = (['running', 'staging'] as const).filter((l) => d.globallyEnabled[l]);
      return `security group ${d.groupId} "${d.name}" created with ${d.rules.length} rule(s)${global.length > 0 ? `, global for ${global.join('+')}` : ''}${
        d.runningSpaces.length + d.stagingSpaces.length > 0 ? `, bound running [${d.runningSpaces.join(',')}] staging [${d.stagingSpaces.join(',')}]` : ''
      }`;
    }
    case 'SecurityGroupUpdated': {
      const d = e.data;
      const global = (['running', 'staging'] as const).filter((l) => d.globallyEnabled[l]);
      return `security group ${d.groupId} updated: "${d.name}", ${d.rules.length} rule(s), global [${global.join(',')}]`;
    }
    case 'SecurityGroupDeleted':
      return `security group ${e.data.groupId} "${e.data.name}" deleted`;
    case 'SecurityGroupSpacesBound':
      return `security group ${e.data.groupId} bound to ${e.data.lifecycle} spaces ${e.data.spaceIds.join(', ')}`;
    case 'SecurityGroupSpacesUnbound':
      return `security group ${e.data.groupId} unbound from ${e.data.lifecycle} spaces ${e.data.spaceIds.join(', ')}`;
    default:
      return e.type;
  }
}
