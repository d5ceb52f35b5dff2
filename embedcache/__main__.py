import sys

from embedcache.cli import main

sys.exit(main())
