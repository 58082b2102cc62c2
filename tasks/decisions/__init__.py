"""The pure decisions of the product: plain functions and models, no Prefect, no driver,
no I/O (an import contract in ``pyproject.toml`` checks it). Tasks do the I/O around
them; tests exercise them directly, many with Hypothesis.

    alerts         severities, routes, the alert model, which part of an alert each route gets
    alerting       the alert state machine: thresholds, reminders, recoveries, inhibition
    checks         the one vocabulary of checks: check -> result (passed, failed, skipped)
                   -> verdict
    drill          the drill's checks and report, the restore's verdicts, scratch and staging
                   names, the restore's safety rules
    manifest       backup ids and keys, the manifest model, and whether a stored one is trusted
    deploy_checks  deploy-verify's checks, their order and skipping, the verdict, the report
    deploy_judges  deploy-verify's judges: what a probe observed -> a check result with the fix
    health         health statuses, the services, one service's health
    redaction      secrets out of text: URL passwords, escaped forms, one error line
    retention      which backup sets to keep or delete, and the invariants a plan must hold
"""
