"""Real DICOM peers for integration tests: DCMTK's command-line tools and an Orthanc server.

    from tests.peers.dcmtk import echoscu, storescu, storescp, dcmtk_available
    from tests.peers.orthanc import orthanc, orthanc_available
    from tests.peers.ports import free_port, wait_for_port

Both come from Debian packages (dcmtk, orthanc) that scripts/install-debian-packages.sh
installs; `make test` runs it first. Nothing here starts a system service: every peer is a
child process of the test, on free loopback ports, with its files under the test's tmp_path.
"""
