import { execFileSync } from 'node:child_process';

/**
 * tsnap's network-lock rules (IPv4 and IPv6) of the connections on `port`.
 * Scoped to a port: rules of other tests or sessions running at the same
 * time, or of images they left unrestored, are not this test's to judge.
 */
export function lockRulesOf(port: number): string[] {
  const out: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    let text = '';
    try { text = execFileSync(tool, ['-t', 'filter'], { encoding: 'utf8' }); } catch { continue; /* no such tool */ }
    out.push(...text.split('\n').filter((l) => l.includes('tsnap-lock') && (l.includes(`--sport ${port} `) || l.includes(`--dport ${port} `))));
  }
  return out;
}
