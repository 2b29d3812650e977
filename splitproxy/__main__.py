from splitproxy.cli.main import main

raise SystemExit(main())
