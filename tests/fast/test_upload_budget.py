"""service/upload_budget.py: uploads reserve their bytes, wait first come first served, and get 503 after the wait;
a cancelled wait leaves nothing reserved."""
from __future__ import annotations

import anyio
import pytest

from imgcls.errors import ImgclsError
from service.upload_budget import ByteBudget


def test_reservations_wait_in_order_and_are_given_back() -> None:
    async def main() -> list[str]:
        budget, order = ByteBudget(10, wait_s=5), []
        first = await budget.reserve(8)

        async def upload(name: str, n: int) -> None:
            held = await budget.reserve(n)
            order.append(name)
            await anyio.sleep(0.01)
            budget.release(held)

        async with anyio.create_task_group() as tg:
            tg.start_soon(upload, "big", 9)
            await anyio.sleep(0.01)
            tg.start_soon(upload, "small", 1)  # would fit now, but waits behind "big": no starvation
            await anyio.sleep(0.01)
            assert order == [] and budget.used == 8
            budget.release(first)
        assert budget.used == 0
        return order

    assert anyio.run(main) == ["big", "small"]


def test_an_upload_that_waits_too_long_gets_503_with_retry_after() -> None:
    async def main() -> None:
        budget = ByteBudget(10, wait_s=0.05)
        await budget.reserve(10)
        with pytest.raises(ImgclsError) as e:
            await budget.reserve(1)
        assert e.value.status == 503 and e.value.reason == "busy" and e.value.headers["Retry-After"]
        assert budget.used == 10 and not budget._waiting

    anyio.run(main)


def test_a_cancelled_wait_leaves_nothing_reserved_and_larger_than_capacity_is_capped() -> None:
    async def main() -> None:
        budget = ByteBudget(10, wait_s=5)
        held = await budget.reserve(6)
        with anyio.move_on_after(0.02):
            await budget.reserve(6)  # the client goes away while it waits
        assert budget.used == 6 and not budget._waiting
        budget.release(held)
        assert await budget.reserve(1000) == 10  # one upload over the budget still gets in, alone

    anyio.run(main)
