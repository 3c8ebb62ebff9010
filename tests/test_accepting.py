"""The rule by which the workers of ``dc_server -workers N`` take turns at accepting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from distcache.server.accepting import NOT_ACCEPTING, AcceptCounts

# Each worker's count of connections, or None for a worker that is not accepting.
tables = st.lists(st.none() | st.integers(0, 5), min_size=1, max_size=8)


def _table(counts: list[int | None]) -> AcceptCounts:
    table = AcceptCounts(len(counts))
    for index, count in enumerate(counts):
        table.slot(index)._counts[index] = NOT_ACCEPTING if count is None else count
    return table


@given(tables)
def test_a_worker_takes_its_turn_when_no_accepting_worker_holds_fewer(counts) -> None:
    table = _table(counts)
    accepting = [count for count in counts if count is not None]
    for index, count in enumerate(counts):
        if count is not None:
            assert table.slot(index).my_turn() == (count == min(accepting))


@given(tables)
def test_some_accepting_worker_always_takes_a_queued_connection(counts) -> None:
    table = _table(counts)
    takers = [index for index, count in enumerate(counts) if count is not None]
    assert not takers or any(table.slot(index).my_turn() for index in takers)


def test_a_worker_that_exits_is_waited_for_by_nobody() -> None:
    table = _table([3, 0])
    assert not table.slot(0).my_turn()
    table.retire(1)
    assert table[1] == NOT_ACCEPTING
    assert table.slot(0).my_turn()
