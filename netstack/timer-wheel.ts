import type { Clock } from './clock.js';

/**
 * One timer wheel for every timer in a Stack (TCP retransmission, persist,
 * keepalive, TIME-WAIT, fragment reassembly, held SYNs...).
 *
 * A hashed wheel: a timer lives in slot `floor(deadline / tick) % slots`, in
 * an intrusive doubly linked list, so arming, re-arming and cancelling are
 * O(1) and allocate nothing (the Timer object is made once, by its owner, and
 * re-armed for its whole life). `advance()` visits each slot whose tick has
 * passed; timers due in a later rotation stay where they are.
 *
 * Nothing here reads a real clock or sets a real timeout: the owner calls
 * `advance()` when `nextDeadline()` says so (src/ does that with one
 * setTimeout; tests move a ManualClock).
 */
/** Timer.slot while collected by advance() and not yet fired. */
const PENDING_FIRE = -2;
/** Slots per group of the rescan's summary (TimerWheel.groupMin). */
const GROUP_SHIFT = 6;
const GROUP_SLOTS = 1 << GROUP_SHIFT;

export class Timer {
  /** Absolute deadline in clock milliseconds; Infinity while not armed. */
  deadline = Infinity;
  /** @internal */ next: Timer | null = null;
  /** @internal */ prev: Timer | null = null;
  /** @internal */ slot = -1;

  constructor(readonly fire: () => void) {}

  get armed(): boolean {
    return this.slot !== -1;
  }
}

export class TimerWheel {
  private readonly heads: (Timer | null)[];
  /** The last tick whose slot has been processed. */
  private currentTick: number;
  private count = 0;
  /** Scratch list for advance(), kept to avoid an allocation per call. */
  private readonly due: Timer[] = [];
  /**
   * The earliest armed deadline, exactly, while `minKnown`; otherwise a lower
   * bound of every armed deadline (where the next scan may start). The owner
   * asks nextDeadline() after every batch; with thousands of TIME-WAIT timers
   * a full scan each time cost more than the batch (seen in bench:compare's
   * new-connections profile). Arming keeps the minimum exact; removing the
   * minimum timer makes it unknown until the next nextDeadline().
   */
  private minDeadline = Infinity;
  private minKnown = true;
  /**
   * Per slot, the same idea: the earliest deadline filed there, exact while
   * slotMinKnown[slot] is 1. A rescan then reads one number per slot and
   * walks only the lists whose minimum went, instead of every far-future
   * (TIME-WAIT) timer on the wheel.
   */
  private readonly slotMin: Float64Array;
  private readonly slotMinKnown: Uint8Array;
  /**
   * Per group of GROUP_SLOTS slots: a lower bound of every deadline filed in
   * the group, exact while groupMinKnown is 1. A rescan skips a group whose
   * bound is no better than what it has found, so it reads ~slots/64 numbers
   * instead of every slot: with only far timers left (TIME-WAIT, 60 s, past
   * a whole rotation) each rescan read all 4,096 slots, and a new connection
   * cancels its earliest timer a few times (held SYN, SYN-ACK retransmission):
   * ~12 us a connection in bench:compare's new-connections profile.
   */
  private readonly groupMin: Float64Array;
  private readonly groupMinKnown: Uint8Array;

  constructor(
    private readonly clock: Clock,
    private readonly tickMs = 1,
    private readonly slotCount = 4096,
  ) {
    if (!(tickMs > 0) || !Number.isInteger(slotCount) || slotCount < 1) {
      throw new RangeError('TimerWheel: tickMs must be > 0 and slotCount a positive integer');
    }
    this.heads = new Array<Timer | null>(slotCount).fill(null);
    this.slotMin = new Float64Array(slotCount).fill(Infinity);
    this.slotMinKnown = new Uint8Array(slotCount).fill(1);
    const groups = Math.ceil(slotCount / GROUP_SLOTS);
    this.groupMin = new Float64Array(groups).fill(Infinity);
    this.groupMinKnown = new Uint8Array(groups).fill(1);
    this.currentTick = Math.floor(clock.now() / tickMs);
  }

  /** Number of armed timers. */
  get size(): number {
    return this.count;
  }

  /** Arms (or re-arms) `timer` to fire `delayMs` from now. */
  arm(timer: Timer, delayMs: number): void {
    this.armAt(timer, this.clock.now() + Math.max(0, delayMs));
  }

  /** Arms (or re-arms) `timer` to fire at absolute time `deadline`. */
  armAt(timer: Timer, deadline: number): void {
    if (timer.slot >= 0) this.unlink(timer);
    timer.deadline = deadline;
    // File by the first tick at or after the deadline, so that every timer of
    // the current rotation in a processed slot is due; and never into a slot
    // already passed, where it would wait a whole rotation.
    const tick = Math.max(Math.ceil(deadline / this.tickMs), this.currentTick + 1);
    const slot = tick % this.slotCount;
    timer.slot = slot;
    timer.prev = null;
    timer.next = this.heads[slot]!;
    if (timer.next !== null) timer.next.prev = timer;
    this.heads[slot] = timer;
    this.count++;
    // Exact stays exact; a lower bound stays a lower bound.
    if (deadline < this.minDeadline) this.minDeadline = deadline;
    if (deadline < this.slotMin[slot]!) this.slotMin[slot] = deadline;
    const group = slot >> GROUP_SHIFT;
    if (deadline < this.groupMin[group]!) this.groupMin[group] = deadline;
  }

  cancel(timer: Timer): void {
    if (timer.slot >= 0) this.unlink(timer);
    timer.slot = -1;
    timer.deadline = Infinity;
  }

  /**
   * Fires every timer whose deadline is <= now, in no guaranteed order within
   * one tick. Returns how many fired. A timer callback may arm or cancel any
   * timer, itself included.
   */
  advance(now = this.clock.now()): number {
    const nowTick = Math.floor(now / this.tickMs);
    if (nowTick <= this.currentTick) return 0;
    let fired = 0;
    // Beyond one full rotation every slot has been visited once: no need to loop more.
    const steps = Math.min(nowTick - this.currentTick, this.slotCount);
    const firstTick = nowTick - steps + 1;
    this.currentTick = nowTick;
    // Collect first, fire after: callbacks may arm or cancel any timer, and
    // must not disturb the list being walked.
    const due = this.due;
    for (let t = firstTick; t <= nowTick; t++) {
      const slot = t % this.slotCount;
      let left = Infinity;
      for (let timer: Timer | null = this.heads[slot]!; timer !== null; ) {
        const next: Timer | null = timer.next;
        if (timer.deadline <= now) {
          this.unlink(timer);
          timer.slot = PENDING_FIRE;
          due.push(timer);
        } else if (timer.deadline < left) {
          left = timer.deadline;
        }
        timer = next;
      }
      // The walk saw every timer left in the slot: its minimum is known again.
      this.slotMin[slot] = left;
      this.slotMinKnown[slot] = 1;
    }
    for (let i = 0; i < due.length; i++) {
      const timer = due[i]!;
      // Skip a timer that an earlier callback cancelled or re-armed.
      if (timer.slot !== PENDING_FIRE) continue;
      timer.slot = -1;
      timer.deadline = Infinity;
      fired++;
      timer.fire();
    }
    due.length = 0;
    return fired;
  }

  /**
   * When advance() will fire the earliest armed timer (its deadline rounded up
   * to the wheel's tick), or undefined if none is armed.
   * O(slots + timers) in the worst case: meant for once per batch, to set the
   * one real timeout, not for per-packet use.
   */
  nextDeadline(): number | undefined {
    if (this.count === 0) {
      this.minDeadline = Infinity;
      this.minKnown = true;
      return undefined;
    }
    if (!this.minKnown) {
      this.minDeadline = this.scanEarliest(this.minDeadline);
      this.minKnown = true;
    }
    return this.firingTime(this.minDeadline);
  }

  /** The earliest armed deadline, visiting slots from the tick of `floor` (a lower bound of every deadline). */
  private scanEarliest(floor: number): number {
    // Every timer is filed at the tick of its deadline or later, and never at
    // or before currentTick, so no armed timer sits before this start.
    const start = Math.max(Math.ceil(floor / this.tickMs), this.currentTick + 1);
    let best = Infinity;
    for (let i = 0; i < this.slotCount; ) {
      const tick = start + i;
      const slot = tick % this.slotCount;
      const group = slot >> GROUP_SHIFT;
      // Slots from here to the end of this group (and of the one rotation scanned).
      const span = Math.min(Math.min((group + 1) << GROUP_SHIFT, this.slotCount) - slot, this.slotCount - i);
      if (this.groupLowerBound(group) < best) {
        for (let k = 0; k < span; k++) {
          const m = this.slotMinimum(slot + k);
          if (m < best) best = m;
          // Slot `tick` holds this rotation's deadlines up to tick * tickMs; every
          // later slot holds later ones, so a deadline within this tick is the earliest.
          if (best <= (tick + k) * this.tickMs) return best;
        }
      } else if (best <= (tick + span - 1) * this.tickMs) {
        return best; // nothing in the group beats it, and no later slot can
      }
      i += span;
    }
    return best;
  }

  /** The earliest deadline filed in `slot`, walking its list only when a removal made it unknown. */
  private slotMinimum(slot: number): number {
    if (this.slotMinKnown[slot] === 0) {
      let m = Infinity;
      for (let t: Timer | null = this.heads[slot]!; t !== null; t = t.next) if (t.deadline < m) m = t.deadline;
      this.slotMin[slot] = m;
      this.slotMinKnown[slot] = 1;
    }
    return this.slotMin[slot]!;
  }

  /** A lower bound of every deadline in `group`, made exact first when a removal made it unknown. */
  private groupLowerBound(group: number): number {
    if (this.groupMinKnown[group] === 0) {
      let m = Infinity;
      const end = Math.min((group + 1) << GROUP_SHIFT, this.slotCount);
      for (let slot = group << GROUP_SHIFT; slot < end; slot++) {
        const v = this.slotMinimum(slot);
        if (v < m) m = v;
      }
      this.groupMin[group] = m;
      this.groupMinKnown[group] = 1;
    }
    return this.groupMin[group]!;
  }

  /** advance() fires a timer at the first tick boundary at or after its deadline. */
  private firingTime(deadline: number): number {
    return Math.max(Math.ceil(deadline / this.tickMs), this.currentTick + 1) * this.tickMs;
  }

  private unlink(timer: Timer): void {
    // The earliest may have gone: the old minimum is still a lower bound.
    if (timer.deadline <= this.minDeadline) this.minKnown = false;
    if (timer.deadline <= this.slotMin[timer.slot]!) this.slotMinKnown[timer.slot] = 0;
    if (timer.deadline <= this.groupMin[timer.slot >> GROUP_SHIFT]!) this.groupMinKnown[timer.slot >> GROUP_SHIFT] = 0;
    if (timer.prev !== null) timer.prev.next = timer.next;
    else this.heads[timer.slot] = timer.next;
    if (timer.next !== null) timer.next.prev = timer.prev;
    timer.next = timer.prev = null;
    timer.slot = -1;
    this.count--;
  }
}
