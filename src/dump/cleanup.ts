/**
 * What a dump session must undo should it fail: one stack, unwound last
 * in, first out, so that each step's undo runs while everything it was
 * built on still exists (a round's write-protection is lifted before its
 * image directory goes). A committed session drops the stack instead: the
 * success and failure endings are no longer written twice by hand.
 *
 * Not `using`/`await using`: tsc down-levels them fine for Node 20, but
 * they dispose on success too, and what is kept on success differs per
 * step (an image, a tracking round handed to the caller).
 */
export type Undo = () => void | Promise<void>;

export class CleanupStack {
  private readonly undos: Undo[] = [];

  /** Registers an undo; it runs only if the stack is unwound. */
  defer(undo: Undo): void {
    this.undos.push(undo);
  }

  /** Every undo, newest first; one failing does not keep the others from running. */
  async unwind(): Promise<void> {
    for (const undo of this.undos.splice(0).reverse()) {
      try { await undo(); } catch { /* best effort: the target matters more than our leftovers */ }
    }
  }

  /** The work is kept: nothing will be undone. */
  drop(): void {
    this.undos.length = 0;
  }
}
