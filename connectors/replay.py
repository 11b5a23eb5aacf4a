"""Replay CSV and Parquet files into the readings topic, in time order, resumably.

Several files are merged by timestamp so tickers interleave as they happened. Pacing follows
the files' own clock (sped up, or not at all). Progress is checkpointed per file in Redis only
after the producer has flushed, so a rerun after a crash or Ctrl-C continues after the last
record Kafka acknowledged: nothing is lost, and only records sent after the last checkpoint of
a hard kill can come twice. A malformed line goes to the dead-letter topic with its file and
line number, and the replay goes on.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from vigil.connectors.checkpoint import CheckpointStore, ReplayCheckpoint
from vigil.connectors.file_formats import ColumnChoice, FileRow, Table, expand_paths, open_table
from vigil.connectors.pacing import Pacer
from vigil.connectors.producer import RecordProducer

log = logging.getLogger(__name__)

COMMIT_TIMEOUT_S = 30.0


@dataclass
class FileProgress:
    """One file's progress: where this run started and what it sent."""

    path: Path
    resumed_after: int = 0
    readings: int = 0
    dead_letters: int = 0
    line: int = 0
    offset: int = 0
    total_readings: int = 0
    total_dead_letters: int = 0
    saved_line: int = 0

    def checkpoint(self) -> ReplayCheckpoint:
        return ReplayCheckpoint(
            path=str(self.path),
            line=self.line,
            offset=self.offset,
            readings=self.total_readings,
            dead_letters=self.total_dead_letters,
            updated_at=time.time(),
        )


@dataclass
class ReplaySummary:
    files: list[FileProgress]
    elapsed_s: float = 0.0
    stopped_early: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def readings(self) -> int:
        return sum(f.readings for f in self.files)

    @property
    def dead_letters(self) -> int:
        return sum(f.dead_letters for f in self.files)


class FileReplay:
    """Replays files into Kafka; ``await FileReplay(...).run()`` returns a summary.

    ``stop_after`` ends the run after that many records (readings and dead letters), flushed and
    checkpointed like a normal end; cancelling the task does the same on the way out.
    """

    def __init__(
        self,
        paths: Sequence[Path],
        producer: RecordProducer,
        checkpoints: CheckpointStore | None,
        *,
        columns: ColumnChoice | None = None,
        speed: float = 0.0,
        restart: bool = False,
        topic: str | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 1.0,
        stop_after: int | None = None,
        progress: bool = False,
    ) -> None:
        self.paths = expand_paths(paths)
        if not self.paths:
            raise ValueError("no files to replay")
        self.producer = producer
        self.checkpoints = checkpoints
        self.columns = columns or ColumnChoice()
        self.pacer = Pacer(speed)
        self.restart = restart
        self.topic = topic or producer.settings.topics.readings
        self.checkpoint_every = max(1, checkpoint_every)
        self.checkpoint_interval_s = checkpoint_interval_s
        self.stop_after = stop_after
        self.progress = progress
        self._files: dict[Path, FileProgress] = {}
        self.summary: ReplaySummary | None = None  # live, so an interrupted run can report

    async def run(self) -> ReplaySummary:
        tables = [open_table(path, self.columns) for path in self.paths]  # bad columns fail here
        streams = [await self._resume(table) for table in tables]
        summary = self.summary = ReplaySummary(list(self._files.values()))
        bar = tqdm(
            total=sum(t.count_rows() for t in tables) if self.progress else None,
            initial=sum(f.resumed_after for f in summary.files) if self.progress else 0,
            unit="rec",
            disable=not self.progress,
            desc="replay",
        )
        started = time.monotonic()
        since_commit, last_commit = 0, started
        sent = 0
        try:
            for row in heapq.merge(*streams, key=lambda r: r.ts):
                if self.stop_after is not None and sent >= self.stop_after:
                    summary.stopped_early = True
                    break
                if row.reading is not None and (wait := self.pacer.delay(row.ts)) > 0:
                    if wait >= self.checkpoint_interval_s:
                        await self._commit()  # a long pause: save what is sent before it
                        since_commit, last_commit = 0, time.monotonic()
                    await asyncio.sleep(wait)
                await self._send(row)
                sent += 1
                since_commit += 1
                bar.update(1)
                now = time.monotonic()
                if (
                    since_commit >= self.checkpoint_every
                    or now - last_commit >= self.checkpoint_interval_s
                ):
                    await self._commit()
                    since_commit, last_commit = 0, now
        finally:
            # Runs on a normal end, stop_after, Ctrl-C and task cancellation alike.
            try:
                async with asyncio.timeout(COMMIT_TIMEOUT_S):
                    await self._commit()
            except TimeoutError:
                summary.problems.append("final flush timed out; the last checkpoint stands")
                log.warning("replay: final flush timed out after %.0f s", COMMIT_TIMEOUT_S)
            bar.close()
            for stream in streams:
                stream.close()  # release the file handles now, not at garbage collection
            summary.elapsed_s = time.monotonic() - started
        return summary

    async def _resume(self, table: Table) -> Generator[FileRow, None, None]:
        path = table.path
        progress = FileProgress(path)
        saved: ReplayCheckpoint | None = None
        if self.checkpoints is not None:
            if self.restart:
                await self.checkpoints.clear(path)
            else:
                saved = await self.checkpoints.load(path)
        if saved is not None:
            progress.resumed_after = progress.line = progress.saved_line = saved.line
            progress.offset = saved.offset
            progress.total_readings = saved.readings
            progress.total_dead_letters = saved.dead_letters
            log.info("replay: %s resumes after %s %d", path.name, table.unit, saved.line)
        self._files[path] = progress
        return table.rows(progress.line, progress.offset)

    async def _send(self, row: FileRow) -> None:
        progress = self._files[row.path]
        if row.reading is not None and row.key is not None:
            await self.producer.send_reading(row.key, row.reading, self.topic)
            progress.readings += 1
            progress.total_readings += 1
        else:
            await self.producer.send_dead_letter(
                row.problem or "unreadable row",
                row.raw,
                topic=self.topic,
                source=f"replay:{row.path}:{row.line}",
                key=row.key,
            )
            progress.dead_letters += 1
            progress.total_dead_letters += 1
        progress.line, progress.offset = row.end_line, row.end_offset

    async def _commit(self) -> None:
        """Flush, then record how far each file got (only what Kafka has acknowledged)."""
        changed = [f for f in self._files.values() if f.line != f.saved_line]
        if not changed:
            return
        snapshot = [f.checkpoint() for f in changed]
        await self.producer.flush()
        if self.checkpoints is not None:
            await self.checkpoints.save_many(snapshot)
        for f, cp in zip(changed, snapshot, strict=True):
            f.saved_line = cp.line
