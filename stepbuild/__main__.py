from stepbuild.cli.main import main

raise SystemExit(main())
