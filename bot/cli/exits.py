"""The exit statuses of ``brandbot`` commands, as ``brandbot --help`` lists them."""

from __future__ import annotations

OK = 0
PARTIAL = 1
USAGE = 2
NOTHING_IMPORTED = 3
FAILED = 4
INTERRUPTED = 130

HELP = (
    "Exit status: 0 all good; 1 partly done (import: some lines were rejected; gc: some "
    "folders could not be deleted; 1 is also "
    "Python's status for an unexpected error, which prints a traceback); 2 usage or input "
    "error (a bad option, an unknown dataset, a missing file, an unreachable database); "
    "3 nothing imported (import: every line was rejected, or the file has none); "
    "4 the work did not succeed (train, worker --once: the training run failed; train: "
    "another worker had taken it); "
    '130 interrupted. With --json, import and train print the same as "status" and '
    '"exit_code".'
)


def import_status(accepted: int, rejected: int) -> tuple[str, int]:
    """``(status, exit code)`` of an import: ``accepted`` lines were added or already there."""
    if accepted == 0:
        return "nothing_imported", NOTHING_IMPORTED
    if rejected:
        return "partial", PARTIAL
    return "ok", OK


def run_exit_code(status: str) -> int:
    """Exit code of ``brandbot train`` for a run that ended ``status``: only a succeeded run
    (promoted or not) is 0; a failed run, or one another worker took first, is :data:`FAILED`."""
    return OK if status == "succeeded" else FAILED
