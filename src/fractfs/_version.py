"""The version of this fractfs, in a module of its own so that any module can read it without importing the
package (and with it the public API) first."""
__version__ = "0.3.0.dev0"
