"""Prefetch jobs on the disk tier. A job's record (`job:{id}`) holds its fields and progress; its URLs are in parts
(`job:{id}:{n}`), each the URLs added since the part before (at the submission, then by each manifest expanded),
written once: a save costs the URLs it adds and the record, never all the URLs again. Before parts a record held
every URL and was written whole every 50 URLs done (a 100,000-URL job wrote 13 GB); such a record is still read,
and its URLs become part 0 at its next save. Every value is pinned: the disk's policy would evict it as unread
(bounded: max_jobs a token)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from edgecache.storage.disk import DiskTier

if TYPE_CHECKING:
    from edgecache.admin.jobs import Job


class Records:
    def __init__(self, disk: DiskTier) -> None:
        self.disk = disk
        self._parts: dict[str, tuple[int, int]] = {}  # by job: (parts written, URLs in them)

    async def load(self, job_id: str) -> dict[str, Any] | None:
        """The job's fields, its URLs included; None for a job whose record or a part is not there. StorageError
        for one on a disk out of service."""
        raw = await self.disk.get(f"job:{job_id}")
        if raw is None:
            return None
        fields: dict[str, Any] = json.loads(raw)
        parts = fields.pop("parts", None)
        if parts is not None:
            urls: list[str] = []
            for n in range(parts):
                part = await self.disk.get(f"job:{job_id}:{n}")
                if part is None:
                    return None
                urls.extend(json.loads(part))
            fields["urls"] = urls
            self._parts[job_id] = (parts, len(urls))
        return fields

    async def save(self, job: Job) -> None:
        """The URLs added since the last save, as a part of their own, then the record. StorageError if either
        could not be written (the next save writes what is missing)."""
        parts, saved = self._parts.get(job.id, (0, 0))
        if len(job.urls) > saved:  # a job's URLs are only ever appended to
            await self.disk.put(f"job:{job.id}:{parts}", json.dumps(job.urls[saved:]).encode(), pinned=True)
            parts, saved = self._parts[job.id] = (parts + 1, len(job.urls))
        fields = {k: v for k, v in vars(job).items() if k != "urls"}
        await self.disk.put(f"job:{job.id}", json.dumps({**fields, "parts": parts}).encode(), pinned=True)

    async def delete(self, job_id: str) -> None:
        """The record first (a part no record names is never read), then the parts: one more than counted, as a
        save cut between its part and its record leaves one."""
        parts = self._parts.pop(job_id, (0, 0))[0]
        await self.disk.delete(f"job:{job_id}")
        for n in range(parts + 1):
            await self.disk.delete(f"job:{job_id}:{n}")
