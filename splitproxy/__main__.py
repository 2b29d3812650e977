from splitproxy.cli import main

raise SystemExit(main())
