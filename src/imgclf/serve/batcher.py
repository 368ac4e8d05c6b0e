"""Dynamic micro-batching: requests that arrive while a forward pass runs share the next one.

A batch takes every input already waiting; it waits (up to max_wait_ms) for more only while other requests are
known to be on their way (admitted and being decoded), so a lone client never waits for company. The queue is
bounded, so overload is refused at once (the caller answers 503) instead of piling up;
the forward pass runs in one worker thread, off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)


class Overloaded(Exception):
    """The queue is full: try again shortly."""


class Batcher:
    """Groups submitted inputs into batches of at most max_batch for `infer`, which maps a list of inputs to
    their results, in order, in one worker thread."""

    def __init__(self, infer: Callable[[list], Sequence], max_batch: int = 64, max_wait_ms: float = 2.0,
                 max_queue: int = 512, on_batch: Callable[[int], None] | None = None) -> None:
        self.infer, self.max_batch, self.max_wait = infer, max_batch, max_wait_ms / 1000
        self.on_batch = on_batch or (lambda size: None)
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=max_queue)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-infer")
        self.task: asyncio.Task | None = None
        self.coming = 0  # requests admitted but not submitted yet (see expecting)
        self.arrived = asyncio.Event()

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        await self.queue.join()
        if self.task:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.executor.shutdown(wait=True)

    def depth(self) -> int:
        return self.queue.qsize()

    @contextlib.contextmanager
    def expecting(self):
        """Around the work up to a submit (decoding an image, then submit): a batch being formed may wait for
        this input."""
        self.coming += 1
        try:
            yield
        finally:
            self.coming -= 1
            self.arrived.set()

    def submit(self, x: object) -> asyncio.Future:
        """The future result for one input, queued now; raises Overloaded when the queue is full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((x, future))
        except asyncio.QueueFull:
            raise Overloaded from None
        return future

    def _take(self, items: list) -> None:
        while len(items) < self.max_batch and not self.queue.empty():
            items.append(self.queue.get_nowait())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            self._take(items)
            deadline = loop.time() + self.max_wait
            while len(items) < self.max_batch and self.coming and loop.time() < deadline:
                self.arrived.clear()  # set when a request on its way is submitted (or fails)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), deadline - loop.time())
                self._take(items)
            live = [(x, f) for x, f in items if not f.done()]  # a request that timed out is not computed
            try:
                if live:
                    self.on_batch(len(live))
                    out = await loop.run_in_executor(self.executor, self.infer, [x for x, _ in live])
                    for (_, future), row in zip(live, out, strict=True):
                        if not future.done():
                            future.set_result(row)
            except Exception as err:  # the model failed: every waiting request gets the error, the loop goes on
                log.exception("inference failed for a batch of %d", len(live))
                for _, future in live:
                    if not future.done():
                        future.set_exception(err)
            finally:
                for _ in items:
                    self.queue.task_done()
