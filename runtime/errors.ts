// The error hierarchy shared by every service. Each error has a stable machine-readable `code`, the HTTP status it
// maps to and whether retrying the same request can succeed. Match on `code`, never on message text.

export type ErrorOptionsWithCode = { code?: string; cause?: unknown };

export class NetfoldError extends Error {
  readonly code: string;
  readonly status: number;
  readonly retryable: boolean;

  constructor(message: string, code: string, status: number, retryable: boolean, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'NetfoldError';
    this.code = code;
    this.status = status;
    this.retryable = retryable;
  }

  toBody(): { code: string; error: string } {
    return { code: this.code, error: this.message };
  }
}

/** One problem with an input; `line`: where it is in a file (policy files). */
export type Issue = { path: string; message: string; line?: number };

export class ValidationError extends NetfoldError {
  readonly issues: Issue[];
  constructor(issues: Issue[], code = 'invalid-input') {
    const text = (i: Issue) => `${i.line ? `line ${i.line}: ` : ''}${i.path ? `${i.path}: ${i.message}` : i.message}`;
    super(issues.map(text).join('; '), code, 400, false);
    this.name = 'ValidationError';
    this.issues = issues;
  }
  override toBody(): { code: string; error: string; issues: Issue[] } {
    return { ...super.toBody(), issues: this.issues };
  }
}

/** Well-formed JSON whose content breaks a rule (Cloud Foundry v3 answers these 422 Unprocessable Entity). */
export class UnprocessableError extends NetfoldError {
  readonly issues: Issue[];
  constructor(issues: Issue[], code = 'unprocessable-entity') {
    super(issues.map((i) => (i.path ? `${i.path}: ${i.message}` : i.message)).join('; '), code, 422, false);
    this.name = 'UnprocessableError';
    this.issues = issues;
  }
  override toBody(): { code: string; error: string; issues: Issue[] } {
    return { ...super.toBody(), issues: this.issues };
  }
}

export class UnauthenticatedError extends NetfoldError {
  constructor(message: string, cause?: unknown) {
    super(message, 'unauthenticated', 401, false, cause);
    this.name = 'UnauthenticatedError';
  }
}

export class ForbiddenError extends NetfoldError {
  constructor(message: string, code = 'forbidden') {
    super(message, code, 403, false);
    this.name = 'ForbiddenError';
  }
}

export class NotFoundError extends NetfoldError {
  constructor(message: string, code = 'not-found') {
    super(message, code, 404, false);
    this.name = 'NotFoundError';
  }
}

export class ConflictError extends NetfoldError {
  constructor(message: string, code = 'conflict', retryable = false) {
    super(message, code, 409, retryable);
    this.name = 'ConflictError';
  }
}

/** NATS or JetStream did not answer in time (e.g. during a leader election); the same request may succeed later. */
export class UnavailableError extends NetfoldError {
  constructor(message: string, cause?: unknown) {
    super(message, 'unavailable', 503, true, cause);
    this.name = 'UnavailableError';
  }
}

export class ConfigError extends NetfoldError {
  constructor(message: string, code = 'invalid-config') {
    super(message, code, 500, false);
    this.name = 'ConfigError';
  }
}

/** Turns anything thrown into a NetfoldError: known ones pass through, the rest become a non-retryable 500. */
export function toNetfoldError(err: unknown): NetfoldError {
  if (err instanceof NetfoldError) return err;
  return new NetfoldError('internal error', 'internal', 500, false, err);
}
