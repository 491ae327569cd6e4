"""Disk caches below the vfs and above the backends: object data in blocks (blocks.py).

Modules here import only the standard library and stormount.errors; upward signals
arrive as callables passed in, never as imports of vfs or fuse.
"""
