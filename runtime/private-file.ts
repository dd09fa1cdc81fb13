// Files only their owner may read (the token secret, the admin token). `writeFileSync(…, { mode })` applies the
// mode only when it creates the file, so an existing 0644 file would stay world-readable: write a temporary file
// created 0600 in the same directory, then rename it over the target (atomic; the target gets the new inode's mode).
import { chmodSync, closeSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { basename, dirname, join } from 'node:path';

export const PRIVATE_MODE = 0o600;

/** Writes `content` to `file` with mode 0600, whether or not the file exists and whatever its mode was. */
export function writePrivateFile(file: string, content: string): void {
  const dir = dirname(file);
  mkdirSync(dir, { recursive: true });
  const tmp = join(dir, `.${basename(file)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(tmp, 'wx', PRIVATE_MODE);
  try {
    chmodSync(tmp, PRIVATE_MODE); // the umask only removes bits, but be explicit
    writeSync(fd, content);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw err;
  }
  closeSync(fd);
  try {
    renameSync(tmp, file);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw err;
  }
}

/** Whether group or others may read or write the file. */
export function isExposed(file: string): boolean {
  return (statSync(file).mode & 0o077) !== 0;
}
