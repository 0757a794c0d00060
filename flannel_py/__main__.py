import sys

from flannel_py.cli import main

sys.exit(main())
