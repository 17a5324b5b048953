/** Parsing thread credentials, and deciding what restore can set, against the kernel's rules. */
import { describe, it, expect } from 'vitest';
import fc from 'fast-check';
import { parseCreds } from '../../src/proc/creds.js';
import { credsObstacle, sameCreds, capBits, CAP_NAMES, MAX_GROUPS } from '../../src/restore/creds-check.js';
import type { CredsImage } from '../../formats/schema.js';

describe('parseCreds', () => {
  it('reads ids, groups, every capability set, no_new_privs and seccomp', () => {
    const c = parseCreds([
      'Name:\tx', 'Uid:\t1\t2\t3\t4', 'Gid:\t5\t6\t7\t8', 'FDSize:\t64', 'Groups:\t100 58468 ',
      'CapInh:\t0000000000000420', 'CapPrm:\t0000000000000421', 'CapEff:\t0000000000000400',
      'CapBnd:\t000001fffeffffff', 'CapAmb:\t0000000000000400', 'NoNewPrivs:\t1', 'Seccomp:\t2', 'Seccomp_filters:\t3', '',
    ].join('\n'));
    expect(c).toEqual({
      uid: [1, 2, 3, 4], gid: [5, 6, 7, 8], groups: [100, 58468],
      capInh: 0x420n, capPrm: 0x421n, capEff: 0x400n, capBnd: 0x1fffeffffffn, capAmb: 0x400n,
      noNewPrivs: 1, seccomp: 2, seccompFilters: 3,
    });
  });

  it('an empty group list, and kernels without CapAmb / NoNewPrivs / Seccomp_filters', () => {
    const c = parseCreds('Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\nCapInh:\t0\nCapPrm:\t1\nCapEff:\t1\nCapBnd:\t1\n');
    expect(c.groups).toEqual([]);
    expect([c.capAmb, c.noNewPrivs, c.seccomp, c.seccompFilters]).toEqual([0n, 0, 0, 0]);
  });

  it('malformed lines are errors, not zeros', () => {
    expect(() => parseCreds('Uid:\t1\t2\t3\nGid:\t0\t0\t0\t0\nGroups:\nCapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\n')).toThrow(/Uid/);
    expect(() => parseCreds('Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\nCapInh:\tzz\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\n')).toThrow(/hex/);
    expect(() => parseCreds('Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nCapInh:\t0\nCapPrm:\t0\nCapEff:\t0\nCapBnd:\t0\n')).toThrow(/Groups/);
  });
});

const ROOT_CAPS = (1n << 41n) - 1n - (1n << 24n); // every capability but CAP_SYS_RESOURCE, as root here
const root: CredsImage = {
  uid: [0, 0, 0, 0], gid: [0, 0, 0, 0], groups: [0],
  capInh: 0n, capPrm: ROOT_CAPS, capEff: ROOT_CAPS, capBnd: ROOT_CAPS, capAmb: 0n, securebits: 0, noNewPrivs: 0,
};
const mask = fc.bigInt({ min: 0n, max: (1n << 41n) - 1n });

/**
 * A state the kernel can produce: effective within permitted, ambient
 * within permitted and inheritable.
 */
const creds = fc.record({ prm: mask, eff: mask, inh: mask, bnd: mask, amb: mask, uid: fc.nat(70000) }).map((r): CredsImage => ({
  ...root, uid: [r.uid, r.uid, r.uid, r.uid], capPrm: r.prm, capEff: r.eff & r.prm, capInh: r.inh, capBnd: r.bnd, capAmb: r.amb & r.prm & r.inh,
}));

describe('credsObstacle', () => {
  it('anything within what root has here can be set; the obstacle names exactly what is missing', () => {
    fc.assert(fc.property(creds, (want) => {
      const missingPrm = want.capPrm & ~root.capPrm;
      const missingBnd = want.capBnd & ~root.capBnd;
      const missingInh = want.capInh & ~(root.capInh | root.capBnd);
      const o = credsObstacle(want, root, 'tsnap');
      if (missingPrm === 0n && missingBnd === 0n && missingInh === 0n) {
        expect(o).toBeNull();
      } else {
        const first = missingPrm || missingBnd || missingInh;
        expect(o).toContain(capBits(first).map((n) => CAP_NAMES[n]).join(', '));
      }
    }));
  });

  it('identical credentials need no privilege at all; different ones need CAP_SETUID, CAP_SETGID and CAP_SETPCAP', () => {
    const user: CredsImage = { ...root, uid: [1000, 1000, 1000, 1000], gid: [1000, 1000, 1000, 1000], groups: [1000], capPrm: 0n, capEff: 0n, capBnd: ROOT_CAPS };
    expect(credsObstacle(user, user, 'tsnap')).toBeNull();
    expect(credsObstacle({ ...user, groups: [1000, 27] }, user, 'tsnap')).toMatch(/lacks CAP_SETUID/);
    expect(credsObstacle(user, { ...root, capEff: root.capEff & ~(1n << 8n) }, 'tsnap')).toMatch(/lacks CAP_SETPCAP/);
    expect(sameCreds({ ...user, groups: [2, 1] }, { ...user, groups: [1, 2] })).toBe(true);
    expect(credsObstacle({ ...user, groups: Array.from({ length: MAX_GROUPS + 1 }, (_, i) => i) }, root, 'tsnap')).toMatch(/supplementary groups/);
    expect(credsObstacle({ ...user, groups: Array.from({ length: MAX_GROUPS }, (_, i) => i) }, root, 'tsnap')).toBeNull();
  });

  it('states the kernel never produces are refused as such', () => {
    expect(credsObstacle({ ...root, capPrm: 0n, capEff: 1n }, root, 'tsnap')).toMatch(/never produces/);
    expect(credsObstacle({ ...root, capAmb: 1n << 10n }, root, 'tsnap')).toMatch(/never produces/);
  });
});
