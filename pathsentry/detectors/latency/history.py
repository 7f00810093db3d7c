"""Each account's recent session scores, and what they do to its next one.

Owns the account history of the relay detector (mixed into :class:`~.scoring.Scoring`):
the last ``history_len`` session scores of each account with its count of flagged
sessions (:meth:`AccountHistory._remember`), how many of them were suspicious
(``suspicious_history``), and the boost a login's score takes from an account whose
recent sessions were suspicious too, or the damping from one whose recent sessions
were clean (:meth:`AccountHistory._with_history`).
"""

from __future__ import annotations

from typing import Any

from mypy_extensions import trait

from pathsentry.detectors.latency.state import BoundedLRU, Session

__all__ = ["AccountHistory"]


@trait  # a mixin: the compiled build takes it beside its one non-trait base
class AccountHistory:
    """Per-account session scores: kept, counted, and applied to the next score."""

    history_len: int
    suspicious_history: float
    #: account -> (flagged sessions, then session id and score of its last
    #: ``history_len`` sessions, oldest first)
    accounts: BoundedLRU[str, tuple[Any, ...]]

    def _remember(self, account: str, sess: Session, base: float, first_flag: bool = False) -> int:
        """Put the session's score into the account's history (replacing an earlier score
        of the same session); returns the account's number of flagged sessions."""
        accounts = self.accounts
        table = accounts._d
        acc = table.get(account)
        sid = sess.session_id or sess.event_id
        if acc is None:
            flagged = 1 if first_flag else 0
            accounts.put(account, (flagged, sid, base) if self.history_len > 0 else (flagged,))
            return flagged
        table.move_to_end(account)
        flagged = int(acc[0]) + 1 if first_flag else int(acc[0])
        recent: list[Any] = [flagged]
        for i in range(1, len(acc), 2):
            if acc[i] != sid:
                recent += acc[i:i + 2]
        recent += (sid, base)
        keep = 2 * self.history_len
        if len(recent) > keep + 1:
            del recent[1:len(recent) - keep]
        table[account] = tuple(recent)
        return flagged

    def _suspicious_before(self, sess: Session) -> int:
        """How many of the account's other recent sessions were suspicious."""
        acc = self.accounts.peek(sess.account)
        if acc is None:
            return 0
        sid = sess.session_id or sess.event_id
        threshold = self.suspicious_history
        suspicious = 0
        for i in range(1, len(acc), 2):
            if acc[i + 1] >= threshold and acc[i] != sid:
                suspicious += 1
        return suspicious

    def _with_history(self, account: str, sess: Session, base: float) -> tuple[float, str | None]:
        if base <= 0.0:  # nothing to boost or damp
            return base, None
        acc = self.accounts.peek(account)
        if acc is None:
            return base, None
        sid = sess.session_id or sess.event_id
        threshold = self.suspicious_history
        prior = suspicious = 0
        top = 0.0
        for i in range(1, len(acc), 2):
            if acc[i] != sid:
                v = acc[i + 1]
                if not prior or v > top:
                    top = v
                prior += 1
                if v >= threshold:
                    suspicious += 1
        if base >= 0.35 and suspicious:
            boosted = base + (1.0 - base) * min(0.6, 0.2 * suspicious)
            return boosted, (
                f"{suspicious} of the account's last {prior} sessions were also "
                f"suspicious: score {base:.2f} -> {boosted:.2f}"
            )
        if base < 0.8 and prior >= 3 and top < 0.3:
            damped = base * 0.85
            return damped, (
                f"the account's last {prior} sessions were clean: one noisy session is "
                f"not enough (score {base:.2f} -> {damped:.2f})"
            )
        return base, None
