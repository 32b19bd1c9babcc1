"""List and roll back head versions (torch-free)."""

from __future__ import annotations

from pathlib import Path

from edgetl.bundle import DEFAULT_TASK, Bundle
from edgetl.errors import EdgetlError
from edgetl.ondevice.results import HeadsReport, HeadVersion


def heads(bundle: str | Path, task: str = DEFAULT_TASK) -> HeadsReport:
    """The versions of a bundle's head store, the active one, and every problem found.

    Args:
        bundle: the bundle folder.
        task: which head in a multi-task bundle.

    Returns:
        HeadsReport; `problems` names each missing, tampered or unreadable version (empty when
        the store is sound), `factory_only` when no store exists yet.

    Raises:
        BundleError: the bundle itself is untrusted.
        EdgetlError: the store's index is unreadable, inconsistent or belongs to another bundle.
    """
    b = Bundle.open(bundle)
    store = b.heads(task)
    if not store.exists():
        return HeadsReport(str(bundle), task, 0, [], [], True)
    index = store.index()
    versions = [HeadVersion(e["version"], e["parent"], str(e.get("created", "")), str(e.get("source", "")),
                            list(e["labels"]), e["sha256"], e.get("metrics") or {}) for e in index["versions"]]
    damaged = store.damaged()
    return HeadsReport(str(bundle), task, int(index["active"]), versions, list(damaged.values()), False,
                       sorted(damaged))


def rollback(bundle: str | Path, version: int | None = None, task: str = DEFAULT_TASK) -> tuple[int, int]:
    """Make `version` (default: the active head's parent) the active head again.

    Args:
        bundle: the bundle folder.
        version: the version to activate; None rolls back to the active one's parent.
        task: which head in a multi-task bundle.

    Returns:
        (now active, was active).

    Raises:
        EdgetlError: no store, no parent to roll back to, an unknown or tampered version.
    """
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 0):
        raise EdgetlError(f"version must be a whole number 0 or more, not {version!r}")
    b = Bundle.open(bundle)
    store = b.heads(task, repair=True)  # an index whose active version is not listed is what rollback repairs
    if not store.exists():
        raise EdgetlError(f"'{bundle}' has no head store; the factory head is already active")
    with store.writer() as writer:
        index = store.index()
        active = index["active"]
        listed = [e["version"] for e in index["versions"]]
        if version is None and active not in listed:
            raise EdgetlError(f"the active version {active!r} of '{store.index_path}' is not listed; pass the "
                              f"version to activate, one of {listed}")
        if version is None:
            version = store.entry(active, index)["parent"]
            if version is None:
                raise EdgetlError(f"version {active} (the factory head) is active and has no parent; "
                                  "pass a version to roll forward")
        writer.activate(version)
    return version, active
