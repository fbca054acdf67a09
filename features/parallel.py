"""Per-study work mapped over workers: in-process, a local process pool, or an existing Dask cluster.

Ingestion (one task per study) and the texture stage (one pyradiomics job per vertebra) hand
their per-item function here; which executor runs it is configuration (``ingest.workers`` /
``texture.workers`` and ``compute.dask_address``), not a code path of the stage. Results come back
in input order whatever the executor, so the stage's outputs are identical to the serial run.
DVC still decides what is stale: the executor is not a stage parameter (it changes where the
work runs, never what it computes).

The function and its items must be picklable (module-level functions, plain data): processes
and Dask workers import the project afresh. A Dask worker must see the same files (shared
storage) and have the same environment installed (``requirements.lock``).
"""
from __future__ import annotations

import contextlib
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Generic, Iterator, Sequence, TypeVar

from osteo_config.compute import ComputeConfig

T = TypeVar("T")
R = TypeVar("R")


class DaskUnreachableError(RuntimeError):
    """The Dask scheduler of ``compute.dask_address`` did not answer."""


class ItemExecutor:
    """Maps a picklable function over items on one executor; results in input order (see :func:`open_executor`)."""

    def __init__(self, pool: Any = None, client: Any = None) -> None:
        self._pool, self._client = pool, client

    @property
    def kind(self) -> str:
        return "dask" if self._client is not None else "processes" if self._pool is not None else "serial"

    def map(self, fn: Callable[[T], R], items: Sequence[T], on_done: Callable[[], None] | None = None) -> list[R]:
        """``[fn(x) for x in items]`` on this executor; ``on_done`` is called once per finished item.

        Raises:
            Whatever ``fn`` raises for an item (re-raised here, after the others were submitted).
        """
        return self.submit(fn, items).results(on_done)

    def submit(self, fn: Callable[[T], R], items: Sequence[T]) -> "PendingItems[R]":
        """Start ``fn`` on every item now (processes / Dask) and return at once; the caller does other
        work, then collects with :meth:`PendingItems.results`. In-process, the items run at collection."""
        items = list(items)
        if self._client is not None:
            # pure=False: every item runs, none deduplicated
            return PendingItems(futures=self._client.map(fn, items, pure=False), cancel=self._client.cancel)
        if self._pool is not None and len(items) > 1:
            return PendingItems(futures=[self._pool.submit(fn, x) for x in items])
        return PendingItems(thunk=(fn, items))


class PendingItems(Generic[R]):
    """Items submitted by :meth:`ItemExecutor.submit`; :meth:`results` waits for them in input order."""

    def __init__(self, futures: list | None = None, cancel: Callable[[list], Any] | None = None,
                 thunk: tuple[Callable, list] | None = None) -> None:
        self._futures, self._cancel, self._thunk = futures, cancel, thunk

    def results(self, on_done: Callable[[], None] | None = None) -> list[R]:
        """The results in input order; ``on_done`` once per finished item.

        Raises:
            Whatever the function raised for an item (on Dask the items not yet finished are cancelled).
        """
        tick, out = on_done or (lambda: None), []
        if self._thunk is not None:
            fn, items = self._thunk
            for x in items:
                out.append(fn(x))
                tick()
            return out
        try:
            for f in self._futures:             # input order (the pool / cluster runs them concurrently)
                out.append(f.result())
                tick()
        finally:
            if self._cancel is not None:
                self._cancel(self._futures)     # an item failed: the rest are not left running
        return out


@contextlib.contextmanager
def open_executor(workers: int, compute: ComputeConfig | None = None) -> Iterator[ItemExecutor]:
    """The executor of a stage's per-item work, open for the ``with`` block.

    Args:
        workers: processes on this machine when ``compute.dask_address`` is unset (<= 1: in-process).
        compute: the ``compute:`` section; with ``dask_address`` set the items run as tasks on that Dask
            cluster (``workers`` is then ignored: the cluster has its own).

    Raises:
        DaskUnreachableError: ``dask_address`` is set and no scheduler answers there within
            ``compute.connect_timeout_s``.
    """
    compute = compute or ComputeConfig()
    if compute.dask_address:
        from distributed import Client

        address, timeout_s = compute.dask_address, compute.connect_timeout_s
        try:
            client = Client(address, timeout=timeout_s, set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise DaskUnreachableError(
                f"no Dask scheduler answered at {address} within {timeout_s:g} s ({type(exc).__name__}): start "
                f"one (`dask scheduler`, then `dask worker {address}` on each machine) or set "
                f"compute.dask_address to null in params.yaml to run on this machine") from None
        with client:
            yield ItemExecutor(client=client)
    elif workers > 1:
        # spawn: workers import the modules afresh, never inherit the parent's locks or threads
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            yield ItemExecutor(pool=pool)
    else:
        yield ItemExecutor()


def map_items(fn: Callable[[T], R], items: Sequence[T], *, workers: int = 1, compute: ComputeConfig | None = None,
              on_done: Callable[[], None] | None = None) -> list[R]:
    """One-shot :func:`open_executor` + :meth:`ItemExecutor.map` (at most ``len(items)`` processes)."""
    items = list(items)
    with open_executor(min(workers, len(items)), compute) as ex:
        return ex.map(fn, items, on_done)
