"""Existing tests elsewhere in the suite that the catalogue counts as evidence.

A case listed here is proven (in whole or in the part named) by tests that
already exist next to the code they test; the fault suite does not repeat
them.  ``test_evidence.py`` fails when one of them is renamed or removed,
so the evidence cannot rot silently, and ``python -m tests.faults`` runs
them with the suite.
"""

from __future__ import annotations

from typing import Final

EVIDENCE: Final[dict[int, tuple[str, ...]]] = {
    # 7: the check at start, the move aside, no silent recreate (store level).
    7: (
        "tests/store/test_store_files.py::test_damaged_page_is_detected_moved_aside_and_not_recreated",
        "tests/store/test_store_files.py::test_damaged_db_moves_aside_with_its_wal",
        "tests/store/test_store_files.py::test_file_that_is_not_a_database_is_moved_aside",
    ),
    # 8: the lock is the kernel's flock, freed when its holder is killed.
    8: ("tests/store/test_store_files.py::test_lock_is_freed_when_the_holder_is_killed",),
    # 9: a reader never blocks the writer.
    9: ("tests/store/test_store_transactions.py::test_long_reader_does_not_block_writes",),
    # 10: SIGKILL inside a migration's transaction.
    10: ("tests/store/test_store_schema.py::test_sigkill_inside_a_migration_rolls_it_back",),
    # 12: the backoff's ceilings double from 0.5 s up to the 60 s cap, fully jittered.
    12: (
        "tests/protocol/test_protocol_backoff.py::test_ceilings_double_from_half_a_second_up_to_the_cap",
        "tests/protocol/test_protocol_backoff.py::test_full_jitter_scales_the_ceiling",
        "tests/protocol/test_protocol_backoff.py::test_reset_only_after_a_healthy_session",
    ),
    # 14: the same fault with a short heartbeat, in process.
    14: (
        "tests/link/test_link_link.py::test_a_half_open_link_is_found_by_heartbeats_and_replaced",
    ),
    # 17: a repeated start_run; an older flow version; an activation with an old serial.
    17: (
        "tests/link/test_link_dispatch.py::test_a_repeated_start_run_never_starts_a_second_run",
        "tests/link/test_link_sync.py::test_an_older_version_replayed_is_ignored",
        "tests/link/test_link_sync.py::test_rollback_needs_a_signed_activation_with_a_higher_serial",
        "tests/controlplane/test_cp_link.py::test_events_are_stored_once_in_order_and_gaps_ack_the_contiguous_seq",
    ),
    # 24: the watchdog rule, on a real datagram socket.
    24: (
        "tests/ops/test_notify.py::test_the_watchdog_is_fed_only_while_the_watched_loop_beats",
        "tests/ops/test_notify.py::test_the_watchdog_task_feeds_every_interval_and_stops_when_the_loop_stalls",
    ),
    # 25: used, expired and garbled tokens through the real CLI and control plane.
    25: (
        "tests/e2e/test_link_processes.py::test_pair_command_reports_used_expired_and_garbled_tokens",
    ),
    # 26: a wrong CA, another host's certificate, plaintext to a remote host, redirects.
    26: (
        "tests/link/test_link_tls.py::test_a_wrong_ca_is_refused_for_pairing_and_for_the_link",
        "tests/link/test_link_tls.py::test_a_certificate_for_another_host_is_refused",
        "tests/link/test_link_tls.py::test_a_plaintext_link_to_a_remote_host_is_refused",
        "tests/link/test_link_tls.py::test_a_link_redirect_to_another_host_is_refused",
    ),
    # 29: a tampered flow, another tenant's flow, an invalid flow.
    29: (
        "tests/link/test_link_sync.py::test_a_tampered_signature_is_rejected_and_the_good_version_stays",
        "tests/link/test_link_sync.py::test_another_tenants_flow_is_rejected",
        "tests/link/test_link_sync.py::test_an_invalid_flow_is_rejected_with_its_issues",
    ),
    # 30: Hypothesis on the decoder and the flow parser; size and depth limits.
    30: (
        "tests/protocol/test_protocol_frames.py::test_fuzz_arbitrary_text",
        "tests/protocol/test_protocol_frames.py::test_fuzz_json_frames",
        "tests/protocol/test_protocol_frames.py::test_fuzz_arbitrary_json",
        "tests/protocol/test_protocol_frames.py::test_size_limit_counts_utf8_bytes",
        "tests/protocol/test_protocol_frames.py::test_depth_limit_without_recursion",
        "tests/flow/test_fuzz.py::test_arbitrary_json_gives_flow_invalid",
        "tests/flow/test_fuzz.py::test_mutated_valid_flows_give_flow_invalid_or_run",
        "tests/flow/test_fuzz.py::test_deep_nesting_gives_flow_invalid_not_recursion_error",
    ),
    # 32: every spelling of the metadata address, redirects, schemes.
    32: (
        "tests/connectors/test_network_guard.py::test_every_spelling_of_the_metadata_address_is_refused",
        "tests/connectors/test_network_guard.py::test_a_redirect_into_metadata_is_refused",
        "tests/connectors/test_network_guard.py::test_a_redirect_to_another_scheme_is_refused",
        "tests/connectors/test_network_guard.py::test_a_name_is_connected_to_the_address_the_guard_checked",
    ),
    # 33: the canary through connector configs, peers' errors, results, the API, the DB.
    33: ("tests/test_secrets_canary.py::test_the_canary_never_leaks",),
    # 34: the deployment gates.
    34: (
        "tests/packaging/test_systemd_unit.py::test_security_exposure_is_at_most_2",
        "tests/packaging/test_systemd_unit.py::test_the_gate_fails_a_bare_unit",
        "tests/packaging/test_kubernetes.py::test_every_pod_is_restricted",
        "tests/packaging/test_kubernetes.py::test_the_checker_catches_each_loosening",
    ),
}
