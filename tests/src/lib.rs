//! End-to-end test support for Nubo: the testbed runner lives in tests/tests.
