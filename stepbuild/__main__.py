from stepbuild.cli import main

raise SystemExit(main())
