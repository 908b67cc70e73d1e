from django.contrib.auth.views import redirect_to_login
from django_otp.admin import OTPAdminSite


class AdminSite(OTPAdminSite):
    """The admin lets in only staff past the second factor, and signs people in as the console does."""

    def login(self, request, extra_context=None):
        return redirect_to_login(request.GET.get("next") or request.get_full_path())
