/**
 * The shared secret of serve and migrate. The receiver restores whatever
 * a holder of the token sends, so a token file is held to ssh's rule for
 * private keys: owned by this user (or root) and closed to group and others.
 * A secret on the command line is readable by every user (ps), so
 * --token works but says so.
 */
import { readFileSync, statSync } from 'node:fs';
import { TsnapError } from '../errors.js';

export interface TokenOptions {
  token?: string;
  tokenFile?: string;
}

export function readToken(o: TokenOptions, warn: (m: string) => void): string {
  if (o.tokenFile) return readTokenFile(o.tokenFile);
  if (o.token) {
    warn('--token is visible to every user of this machine (ps, /proc/PID/cmdline); use --token-file F (chmod 600 F) or TSNAP_TOKEN');
    return o.token;
  }
  const t = process.env.TSNAP_TOKEN;
  if (!t) throw new TsnapError('usage', 'a shared secret is required: --token-file, TSNAP_TOKEN or --token (the receiver runs what it is sent)');
  return t;
}

export function readTokenFile(path: string): string {
  let st;
  try {
    st = statSync(path);
  } catch (err) {
    throw unreadable(path, err as NodeJS.ErrnoException);
  }
  if (!st.isFile()) throw new TsnapError('usage', `token file ${path} is not a regular file; give a file holding the secret`);
  const uid = process.getuid?.() ?? 0;
  if (st.uid !== uid && st.uid !== 0) {
    throw new TsnapError('permission', `token file ${path} is owned by uid ${st.uid}, not by you (uid ${uid}) or root; anyone who owns it can change the secret: chown it`);
  }
  if (st.mode & 0o077) {
    const who = [st.mode & 0o070 ? 'group' : '', st.mode & 0o007 ? 'others' : ''].filter(Boolean).join(' and ');
    throw new TsnapError('permission', `token file ${path} is open to ${who} (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); chmod 600 ${path}`);
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw unreadable(path, err as NodeJS.ErrnoException);
  }
  const t = text.trim();
  if (!t) throw new TsnapError('usage', `token file ${path} is empty; write the shared secret into it`);
  return t;
}

function unreadable(path: string, e: NodeJS.ErrnoException): TsnapError {
  if (e.code === 'ENOENT') return new TsnapError('usage', `token file ${path} does not exist; create it with the shared secret (chmod 600), or set TSNAP_TOKEN`, e);
  if (e.code === 'EACCES' || e.code === 'EPERM') return new TsnapError('permission', `token file ${path} cannot be read: permission denied`, e);
  return new TsnapError('usage', `token file ${path} cannot be read: ${e.code ?? e.message}`, e);
}
