// Tollgate console enhancements. Every page works without this file: forms post and redirect.
// Here: the CSRF header on htmx requests, the WAI-ARIA tabs of the sign-in dialog, the dialog
// itself, and copy buttons.
(function () {
  'use strict';

  function csrfToken() {
    var m = document.querySelector('meta[name="csrf-token"]');
    return m ? m.getAttribute('content') : '';
  }

  // htmx: every request it sends carries the CSRF token as a header.
  document.addEventListener('htmx:configRequest', function (e) {
    e.detail.headers['X-CSRF-Token'] = csrfToken();
  });

  // Tabs (https://www.w3.org/WAI/ARIA/apg/patterns/tabs/): arrow keys, Home and End move
  // between tabs and activate them; only the selected tab is in the tab order.
  function setupTabs(list) {
    var tabs = Array.prototype.slice.call(list.querySelectorAll('[role="tab"]'));
    function select(tab, focus) {
      tabs.forEach(function (t) {
        var selected = t === tab;
        t.setAttribute('aria-selected', selected ? 'true' : 'false');
        t.tabIndex = selected ? 0 : -1;
        var panel = document.getElementById(t.getAttribute('aria-controls'));
        if (panel) panel.hidden = !selected;
      });
      if (focus) tab.focus();
    }
    tabs.forEach(function (tab, i) {
      tab.addEventListener('click', function (e) {
        e.preventDefault();
        select(tab, true);
      });
      tab.addEventListener('keydown', function (e) {
        var next = null;
        if (e.key === 'ArrowRight') next = tabs[(i + 1) % tabs.length];
        else if (e.key === 'ArrowLeft') next = tabs[(i - 1 + tabs.length) % tabs.length];
        else if (e.key === 'Home') next = tabs[0];
        else if (e.key === 'End') next = tabs[tabs.length - 1];
        if (next) {
          e.preventDefault();
          select(next, true);
        }
      });
    });
    list.tabsSelect = function (name) {
      var t = tabs.filter(function (x) { return x.dataset.tab === name; })[0];
      if (t) select(t, true);
    };
  }
  Array.prototype.forEach.call(document.querySelectorAll('[role="tablist"]'), setupTabs);

  // The sign-in dialog: the header's "Sign up" / "Log in" links open it on the matching tab.
  var dialog = document.getElementById('auth-dialog');
  if (dialog && typeof dialog.showModal === 'function') {
    Array.prototype.forEach.call(document.querySelectorAll('[data-open-auth]'), function (a) {
      a.addEventListener('click', function (e) {
        e.preventDefault();
        dialog.showModal();
        var list = dialog.querySelector('[role="tablist"]');
        if (list && list.tabsSelect) list.tabsSelect(a.getAttribute('data-open-auth'));
      });
    });
    var close = dialog.querySelector('[data-close-dialog]');
    if (close) close.addEventListener('click', function () { dialog.close(); });
  }

  // Copy buttons: hidden until this script can make them work.
  Array.prototype.forEach.call(document.querySelectorAll('[data-copy]'), function (b) {
    b.hidden = false;
    b.addEventListener('click', function () {
      var el = document.getElementById(b.getAttribute('data-copy'));
      if (!el || !navigator.clipboard) return;
      navigator.clipboard.writeText(el.textContent.trim()).then(function () {
        var status = document.getElementById(b.getAttribute('data-copy') + '-status');
        if (status) status.textContent = 'Copied';
      });
    });
  });
})();
