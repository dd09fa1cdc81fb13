#!/usr/bin/env node
// netfold-cni: the CNI plugin (specification 1.0.0) a container runtime runs from its CNI_PATH. Registers the
// TypeScript loader, then runs cni/main.ts.
import { register } from 'tsx/esm/api';

register();
await import('../cni/main.ts');
