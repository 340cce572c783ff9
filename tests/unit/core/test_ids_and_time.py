from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

from forge.core import ids
from forge.core.events import utc_timestamp


def test_ids_have_the_form_and_sort_by_time() -> None:
    first = ids.agent_id()
    time.sleep(0.002)
    later = [ids.agent_id() for _ in range(200)]
    assert ids.AGENT_ID.match(first)
    assert all(first < other for other in later)
    assert len(set(later)) == 200
    assert ids.event_id().startswith("evt_") and len(ids.event_id()) == 30


def test_timestamps_are_utc_with_milliseconds_and_z() -> None:
    moment = datetime(2026, 11, 21, 10, 0, 0, 123456, tzinfo=UTC)
    assert utc_timestamp(moment) == "2026-11-21T10:00:00.123Z"
    other_zone = moment.astimezone(timezone(timedelta(hours=2)))
    assert utc_timestamp(other_zone) == "2026-11-21T10:00:00.123Z"
    assert utc_timestamp().endswith("Z")
