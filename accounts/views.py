"""Signing in to the console and the admin: a password, then a second factor (TOTP or a backup code).
A member without a confirmed authenticator enrols one first."""

from functools import wraps

import segno
from django.contrib import auth
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.views import redirect_to_login
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_POST
from django_otp import login as otp_login
from django_otp import user_has_device

from core.errors import ServiceError

from . import services
from .auth import TENANT_SESSION_KEY, session_member
from .models import Membership


def _next(request) -> str:
    target = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()}, require_https=request.is_secure()):
        return target
    return reverse("console")


def _with_next(name: str, request) -> str:
    return f"{reverse(name)}?next={_next(request)}"


def signin(request):
    if request.user.is_authenticated:
        return redirect(_next(request) if request.user.is_verified() else _with_next("verify", request))
    form = AuthenticationForm(request, data=request.POST or None)
    if request.method == "POST" and form.is_valid():
        auth.login(request, form.get_user())
        return redirect(_with_next("verify", request))
    return render(request, "console/signin.html", {"form": form, "next": _next(request)},
                  status=400 if form.errors else 200)


def verify(request):
    if not request.user.is_authenticated:
        return redirect(_with_next("signin", request))
    if not user_has_device(request.user):
        return redirect(_with_next("enrol", request))
    error = None
    if request.method == "POST":
        try:
            device = services.otp_verify(user=request.user, token=request.POST.get("code", ""))
        except ServiceError as e:
            error = str(e)
        else:
            otp_login(request, device)
            return redirect(_next(request))
    return render(request, "console/verify.html", {"error": error, "next": _next(request)},
                  status=400 if error else 200)


def enrol(request):
    if not request.user.is_authenticated:
        return redirect(_with_next("signin", request))
    device = services.totp_enrolment(user=request.user)
    if device is None:  # enrolled already: only a code lets them in
        return redirect(_with_next("verify", request))
    error = None
    if request.method == "POST":
        try:
            codes = services.totp_confirm(device=device, token=request.POST.get("code", ""))
        except ServiceError as e:
            error = str(e)
        else:
            otp_login(request, device)
            return render(request, "console/backup_codes.html", {"codes": codes, "next": _next(request)})
    return render(request, "console/enrol.html", {
        "qr": segno.make(device.config_url).svg_inline(scale=5), "secret": services.totp_secret(device), "error": error,
        "next": _next(request)}, status=400 if error else 200)


@require_POST
def signout(request):
    auth.logout(request)
    return redirect("signin")


@require_POST
def tenant_choose(request):
    """The tenant a member of several works in, in this session."""
    if not request.user.is_authenticated:
        return redirect_to_login(reverse("console"))
    membership = Membership.objects.filter(user=request.user, tenant__slug=request.POST.get("tenant", "")).first()
    if membership is not None:
        request.session[TENANT_SESSION_KEY] = membership.tenant_id
    return redirect(_next(request))


def member_required(view):
    """A console page: for a member signed in past the second factor (sent to sign in, to the code, or to
    enrol otherwise), with their membership in `request.member`."""

    @wraps(view)
    def wrapped(request, *args, **kwargs):
        if not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        if not request.user.is_verified():
            return redirect(f"{reverse('verify')}?next={request.get_full_path()}")
        request.member = session_member(request.user, request.session)
        if request.member is None:
            return render(request, "console/not_a_member.html", status=403)
        return view(request, *args, **kwargs)

    return wrapped
