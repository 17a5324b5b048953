import { describe, it, expect } from 'vitest';
import { CleanupStack } from '../../src/dump/cleanup.js';
import { DumpSession } from '../../src/dump/session.js';

describe('CleanupStack', () => {
  it('unwinds newest first, awaits each undo, and goes on past one that fails', async () => {
    const s = new CleanupStack();
    const ran: string[] = [];
    s.defer(() => { ran.push('dir'); });
    s.defer(async () => { await new Promise((r) => setTimeout(r, 5)); ran.push('writer'); });
    s.defer(() => { throw new Error('gone'); });
    s.defer(() => { ran.push('round'); });
    await s.unwind();
    expect(ran).toEqual(['round', 'writer', 'dir']);
    await s.unwind();
    expect(ran).toHaveLength(3);
  });
  it('drop keeps the work: nothing runs afterwards', async () => {
    const s = new CleanupStack();
    let ran = false;
    s.defer(() => { ran = true; });
    s.drop();
    await s.unwind();
    expect(ran).toBe(false);
  });
});

describe('DumpSession', () => {
  it('a failure releases what the set holds first, then undoes the steps, members included, once', async () => {
    const session = new DumpSession();
    const ran: string[] = [];
    session.set.attach({ release: () => ran.push('set released'), forget: () => ran.push('forgotten') });
    session.onFailure(() => { ran.push('top dir'); });
    const m = session.member();
    m.onFailure(() => { ran.push('member dir'); });
    m.onFailure(() => { ran.push('member round'); });
    await session.fail();
    await session.fail();
    expect(ran).toEqual(['set released', 'member round', 'member dir', 'top dir']);
  });
  it('a member given up is undone on its own, and not again with the session', async () => {
    const session = new DumpSession();
    const ran: string[] = [];
    const m = session.member();
    m.onFailure(() => { ran.push('member'); });
    await m.unwind();
    await session.fail();
    expect(ran).toEqual(['member']);
  });
  it('after the commit nothing is undone; the set ends the way finish says', async () => {
    const session = new DumpSession();
    const ran: string[] = [];
    session.set.attach({ release: () => ran.push('released'), forget: () => ran.push('forgotten'), settle: () => ran.push('settled') });
    session.onFailure(() => { ran.push('undone'); });
    expect(session.finish('kill')).toBeNull();
    await session.fail();
    session.set.settle();
    expect(ran).toEqual(['forgotten', 'settled']);
  });
});
