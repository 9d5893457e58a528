# diskcache.core's constants that edgecache's Disk subclass uses.
MODE_BINARY: int
UNKNOWN: object
