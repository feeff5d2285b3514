"""The Django app ``schwarz.mailqueue``: only for ``manage.py mailqueue``; it has no models."""

from __future__ import annotations

from django.apps import AppConfig


class MailQueueConfig(AppConfig):
    name = 'schwarz.mailqueue'
    # not "mailqueue": other Django apps use that label (django-mail-queue)
    label = 'schwarz_mailqueue'
    verbose_name = 'mailqueue-runner'
