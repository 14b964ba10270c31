"""An example third-party charter plugin (the tests install it; the README shows how it is written)."""
