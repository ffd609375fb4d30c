"""The `graph` rules (docs/method.md section 3): the user-item relation index and the
second-order item groups."""
