"""The ``libvirt`` snapshot provider against libvirt's ``test:///default`` driver (its domain
``test`` exists and runs): create, change the domain, revert, delete; errors name the host."""

from __future__ import annotations

import asyncio

import pytest

from upgrader.errors import SnapshotError
from upgrader.model import Host, ProviderSpec
from upgrader.plugins import Plugins
from upgrader.providers.base import ProviderContext, SnapshotProvider

pytestmark = pytest.mark.integration

libvirt = pytest.importorskip(
    "libvirt", reason="libvirt-python is not installed: pip install 'upgrader[libvirt]' "
                      "(needs libvirt-dev)")

URI = "test:///default"


def make(settings: dict | None = None):
    return Plugins().create("snapshot", ProviderSpec("libvirt", {"uri": URI, **(settings or {})}),
                            ProviderContext())


async def domain_of(provider, host):
    """The provider's own view of the domain (the test driver's state is per connection)."""
    return await provider._domain(host)


def run(coro):
    return asyncio.run(coro)


def test_is_found_through_its_entry_point_and_satisfies_the_protocol():
    provider = make()
    assert isinstance(provider, SnapshotProvider)
    assert Plugins().lookup("snapshot", "libvirt").plugin == "libvirt"
    run(provider.aclose())


def test_create_change_revert_delete():
    host = Host("web-01", vars={"libvirt_domain": "test"})

    async def scenario():
        async with make() as provider:
            domain = await domain_of(provider, host)
            assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING
            snapshot_id = await provider.create(host, "pre-1.5.0")
            assert snapshot_id == "pre-1.5.0-1"
            assert snapshot_id in await provider.list_snapshots(host)

            # change something observable: the domain is paused after the snapshot
            await asyncio.to_thread(domain.suspend)
            assert domain.state()[0] == libvirt.VIR_DOMAIN_PAUSED

            await provider.revert(host, snapshot_id)
            assert domain.state()[0] == libvirt.VIR_DOMAIN_RUNNING   # as it was snapshotted
            assert domain.snapshotCurrent(0).getName() == snapshot_id

            second = await provider.create(host, "pre-1.5.0")
            assert second == "pre-1.5.0-2"          # numbered per label, never reused
            await provider.delete(host, snapshot_id)
            await provider.delete(host, second)
            assert await provider.list_snapshots(host) == []

            with pytest.raises(SnapshotError) as info:
                await provider.revert(host, snapshot_id)
            assert info.value.host == "web-01"
            assert snapshot_id in str(info.value) and "not found" in str(info.value)

    run(scenario())


def test_hosts_map_to_domains_by_setting_var_or_name():
    async def scenario():
        async with make({"domains": {"app-1": "test"}}) as provider:
            by_setting = Host("app-1", vars={"libvirt_domain": "elsewhere"})
            by_var = Host("app-2", vars={"libvirt_domain": "test"})
            by_name = Host("test")
            assert [provider.domain_name(h) for h in (by_setting, by_var, by_name)] == [
                "test", "test", "test"]
            ids = [await provider.create(h, "pre") for h in (by_setting, by_var, by_name)]
            assert ids == ["pre-1", "pre-2", "pre-3"]   # one domain: one sequence
            for snapshot_id in ids:
                await provider.delete(by_name, snapshot_id)

    run(scenario())


def test_keep_prunes_only_upgraders_own_snapshots():
    host = Host("test")

    async def scenario():
        async with make({"keep": 2}) as provider:
            domain = await domain_of(provider, host)
            # somebody else's snapshot on the same VM is never touched
            await asyncio.to_thread(
                domain.snapshotCreateXML,
                "<domainsnapshot><name>manual</name><description>by hand</description>"
                "</domainsnapshot>", 0)
            made = [await provider.create(host, "pre") for _ in range(4)]
            assert made == ["pre-1", "pre-2", "pre-3", "pre-4"]
            assert await provider.list_snapshots(host) == ["manual", "pre-3", "pre-4"]
            for snapshot_id in ("manual", "pre-3", "pre-4"):
                await provider.delete(host, snapshot_id)

    run(scenario())


def test_unknown_domain_is_a_snapshot_error_naming_the_host():
    host = Host("web-07", vars={"libvirt_domain": "no-such-vm"})

    async def scenario():
        async with make() as provider:
            with pytest.raises(SnapshotError) as info:
                await provider.create(host, "pre")
        return info.value

    error = run(scenario())
    assert error.host == "web-07"
    assert str(error).startswith("web-07: ")
    assert "no-such-vm" in str(error) and URI in str(error)
    assert "Domain not found" in str(error)        # libvirt's own message
    assert isinstance(error.__cause__, libvirt.libvirtError)


def test_a_bad_uri_is_a_snapshot_error_with_libvirts_message():
    async def scenario():
        async with make({"uri": "test:///no/such/file.xml"}) as provider:
            with pytest.raises(SnapshotError) as info:
                await provider.create(Host("web-01"), "pre")
        return info.value

    error = run(scenario())
    assert error.host == "web-01" and "test:///no/such/file.xml" in str(error)


def test_concurrent_snapshots_of_one_domain_get_distinct_ids():
    async def scenario():
        async with make({"keep": 0}) as provider:      # keep them all
            hosts = [Host(f"h{i}", vars={"libvirt_domain": "test"}) for i in range(5)]
            ids = await asyncio.gather(*(provider.create(h, "wave") for h in hosts))
            assert sorted(ids) == [f"wave-{i}" for i in range(1, 6)]
            for snapshot_id in ids:
                await provider.delete(hosts[0], snapshot_id)

    run(scenario())


def test_closed_provider_refuses_work():
    async def scenario():
        provider = make()
        await provider.aclose()
        with pytest.raises(SnapshotError, match="closed"):
            await provider.create(Host("test"), "pre")

    run(scenario())
