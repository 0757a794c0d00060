import sys

from kubeproxy_py.cli import main

sys.exit(main())
