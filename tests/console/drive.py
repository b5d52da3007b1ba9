"""Drives rsgo's web console in headless Chromium (Debian's chromium and chromedriver) through
the operator's key flow, calling the hooks itself where a pipeline would. Prints one JSON report
on stdout; screenshots go to the directory given. Run by tests/it/console.rs, which checks the
report, the audit trail and the log.

usage: drive.py BASE_URL ADMIN_KEY HOOKS_ONLY_KEY STACK ENVIRONMENT SCREENSHOT_DIR
"""

import json
import pathlib
import sys
import time
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ready
from selenium.webdriver.support.ui import WebDriverWait

BASE, ADMIN, HOOKS_ONLY, STACK, ENVIRONMENT, SHOTS = sys.argv[1:7]
SHOTS = pathlib.Path(SHOTS)
SHOTS.mkdir(parents=True, exist_ok=True)
report = {"steps": []}


def step(name, **facts):
    report["steps"].append({"step": name, **facts})


def hook(path, key, body):
    request = urllib.request.Request(
        BASE + path, data=json.dumps(body).encode(), method="POST",
        headers={"X-Api-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


options = webdriver.ChromeOptions()
options.binary_location = "/usr/bin/chromium"
for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900",
             "--disable-gpu", "--no-first-run"):
    options.add_argument(flag)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
driver.set_page_load_timeout(30)
wait = WebDriverWait(driver, 30)


def shot(name):
    driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text(css):
    """The element's text; empty while the page is replacing it."""
    try:
        return driver.find_element(By.CSS_SELECTOR, css).text
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def sign_in(key):
    field = wait.until(ready.visibility_of_element_located((By.ID, "signin-key")))
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "signin-submit").click()


try:
    driver.get(BASE + "/")
    wait.until(ready.visibility_of_element_located((By.ID, "signin")))
    shot("01-sign-in")
    # A key without Admin does not get in.
    sign_in(HOOKS_ONLY)
    wait.until(lambda d: "Admin" in text("#signin-error"))
    step("refused non-admin", message=text("#signin-error"))
    sign_in(ADMIN)
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, f'tr[data-stack="{STACK}"]')))
    row = driver.find_element(By.CSS_SELECTOR, f'tr[data-stack="{STACK}"]')
    step("stacks", row=row.text, stored_in_session=driver.execute_script(
        "return sessionStorage.getItem('rsgo.key') !== null && localStorage.length === 0"))
    shot("02-stacks")

    # Settings → CI/CD Integration: create a key with two permissions and an expiry.
    driver.find_element(By.CSS_SELECTOR, 'nav a[data-page="settings"]').click()
    wait.until(ready.element_to_be_clickable((By.ID, "create-key"))).click()
    wait.until(ready.visibility_of_element_located((By.ID, "key-name"))).send_keys("Console CI")
    for value in ("Hooks.Redeploy", "Hooks.Upgrade"):
        driver.find_element(By.CSS_SELECTOR, f'input[name=permission][value="{value}"]').click()
    driver.execute_script("document.getElementById('key-expiry').value = '2099-12-31'")
    shot("03-create-key-form")
    driver.find_element(By.ID, "create-submit").click()
    new_key = wait.until(ready.visibility_of_element_located((By.ID, "new-key"))).text.strip()
    driver.find_element(By.ID, "copy-key").click()
    wait.until(lambda d: "Copied" in text("#copied"))
    row = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-key="console-ci"]')))
    step("key created", key=new_key, row=row.text, warning=text("#key-once"))
    shot("04-key-shown-once")
    driver.find_element(By.ID, "key-done").click()
    wait.until(lambda d: not d.find_elements(By.ID, "new-key"))
    driver.refresh()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-key="console-ci"]')))
    step("key not shown again", in_page=new_key in driver.page_source)

    # The pipeline uses the key; the deployment appears and its phase changes live.
    driver.find_element(By.CSS_SELECTOR, 'nav a[data-page="deployments"]').click()
    wait.until(ready.presence_of_element_located((By.ID, "deployments")))
    driver.execute_script("window.rsgoMarker = 'no reload'")
    status, answer = hook("/api/hooks/redeploy", new_key, {"stackName": STACK, "environmentId": ENVIRONMENT})
    step("hook with the new key", status=status, answer=answer)
    deployment = answer.get("deploymentId")
    selector = f'tr[data-deployment="{deployment}"] [data-phase]'
    phases, deadline, mid_shot = [], time.time() + 120, False
    while time.time() < deadline:
        try:
            cells = driver.find_elements(By.CSS_SELECTOR, selector)
            seen = cells[0].get_attribute("data-phase") if cells else None
        except StaleElementReferenceException:
            continue
        if seen and (not phases or phases[-1] != seen):
            phases.append(seen)
        if seen == "Running" and not mid_shot:
            shot("05-deployment-running")
            mid_shot = True
        if seen in ("Succeeded", "Failed", "RolledBack"):
            break
        time.sleep(0.1)
    step("deployment live", phases=phases,
         reloaded=driver.execute_script("return window.rsgoMarker") != "no reload",
         row=driver.find_element(By.CSS_SELECTOR, f'tr[data-deployment="{deployment}"]').text)
    shot("06-deployment-done")

    # Revoke with confirmation; the hook refuses the key afterwards.
    driver.find_element(By.CSS_SELECTOR, 'nav a[data-page="settings"]').click()
    wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '[data-revoke="console-ci"]'))).click()
    confirm = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, '[data-confirm-revoke="console-ci"]')))
    shot("07-revoke-confirm")
    confirm.click()
    wait.until(lambda d: "revoked" in text('tr[data-key="console-ci"] .cell-state'))
    shot("08-key-revoked")
    status, answer = hook("/api/hooks/redeploy", new_key, {"stackName": STACK, "environmentId": ENVIRONMENT})
    step("hook after revoke", status=status, answer=answer)

    driver.find_element(By.CSS_SELECTOR, 'nav a[data-page="audit"]').click()
    wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "main table tbody tr")))
    step("audit page", text=text("main table"))
    shot("09-audit")
    driver.find_element(By.ID, "sign-out").click()
    wait.until(ready.visibility_of_element_located((By.ID, "signin")))
    step("signed out", key_kept=driver.execute_script("return sessionStorage.getItem('rsgo.key')"))
except Exception as error:  # the report says where it stopped; the test fails on it
    report["error"] = f"{type(error).__name__}: {error}"
    try:
        shot("99-failure")
        report["page"] = driver.find_element(By.TAG_NAME, "body").text
    except Exception:
        pass
finally:
    driver.quit()
print(json.dumps(report))
sys.exit(1 if "error" in report else 0)
