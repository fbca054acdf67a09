"""Great Expectations suites that gate every dataset (issue: feature store and data validation)."""
