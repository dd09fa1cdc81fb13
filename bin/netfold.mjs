#!/usr/bin/env node
// Entry point of the netfold CLI: registers the TypeScript loader, then runs cli/main.ts.
import { register } from 'tsx/esm/api';

register();
await import('../cli/main.ts');
