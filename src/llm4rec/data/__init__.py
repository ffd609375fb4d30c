"""The `data` rules (docs/method.md section 2): download, convert raw Amazon files or import
a local table, then 5-core filtering and the leave-one-out split."""
