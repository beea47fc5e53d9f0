"""The compile-cache key's module settings (warm_cache.tunables, issue #14): a module no one
imported is keyed by the settings it had when a process last imported it (stored on disk), so
a warm hit in a fresh process imports nothing more, and the key is the one an importing
process computes."""

from __future__ import annotations

import sys

import pytest

from bpcompile import warm_cache

# a small backend module with no registration side effects on import
MODULE = "bpcompile.backends.llvm.timeline"


@pytest.fixture
def fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("BPCOMPILE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(warm_cache, "_DEFAULTS", {})
    # re-importing MODULE rebinds the package's attribute: restore it (and sys.modules) after
    from bpcompile.backends import llvm
    from bpcompile.backends.llvm import timeline

    monkeypatch.setattr(llvm, "timeline", timeline)


def test_unimported_module_keyed_by_its_stored_settings(monkeypatch, fresh_cache):
    full = warm_cache.tunables("llvm")
    monkeypatch.delitem(sys.modules, MODULE)
    # first process without it: imported once (its import-time settings recorded), same key
    assert warm_cache.tunables("llvm") == full
    assert MODULE in sys.modules
    # a later process (nothing in memory): the stored settings stand in, no import
    monkeypatch.delitem(sys.modules, MODULE)
    monkeypatch.setattr(warm_cache, "_DEFAULTS", {})
    assert warm_cache.tunables("llvm") == full
    assert MODULE not in sys.modules


def test_live_settings_of_imported_modules_change_the_key(monkeypatch, fresh_cache):
    from bpcompile.backends.llvm import loops

    before = warm_cache.tunables("llvm")
    monkeypatch.setattr(loops, "UNROLL_OUTER_MAX", None)
    assert warm_cache.tunables("llvm") != before


def test_damaged_settings_entry_is_ignored(monkeypatch, fresh_cache):
    full = warm_cache.tunables("llvm")
    monkeypatch.setattr(warm_cache, "_load_defaults", lambda backend: {})
    monkeypatch.delitem(sys.modules, MODULE)
    monkeypatch.setattr(warm_cache, "_DEFAULTS", {})
    # nothing stored (or unreadable): the module is imported, as before this cache existed
    assert warm_cache.tunables("llvm") == full
    assert MODULE in sys.modules
