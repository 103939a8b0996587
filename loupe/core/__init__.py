"""What every layer shares: types, settings and layout, errors, path globs, file helpers."""
