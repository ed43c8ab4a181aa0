"""Test suite (a package, so test modules import helpers as ``tests.<module>``)."""
