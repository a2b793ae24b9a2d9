"""ML models in a real browser: deploy the seed's linear regression from the form, predict from the form."""

import pytest
import requests
from django.contrib.auth import get_user_model
from rest_framework.authtoken.models import Token

from mlmodels.models import MLModel
from mlmodels.selectors import model_serving_endpoints
from tests.helpers import free_serving_port, wait_for

from .conftest import shot

pytestmark = pytest.mark.django_db(transaction=True)


def test_deploy_the_seed_model_and_predict_from_the_form(page, live_server, agent, login):
    from playwright.sync_api import expect

    admin = get_user_model().objects.create_superuser("admin", password="pw")
    login(page, "admin")
    page.click(".console-nav >> text=ML models")
    page.click(".object-tools >> text=Deploy a model")
    expect(page.locator("h1")).to_have_text("Deploy a model")

    page.click("#fill-seed")
    expect(page.locator("#id_model_path")).to_have_value("models/linear_regression_model.joblib")
    page.check("#id_serve")
    page.fill("#id_port", str(free_serving_port()))
    shot(page, "20-ml-deploy-form")
    page.click("#deploy-model")

    # The model's page follows training, the stored version with its metrics, then the server.
    expect(page.locator("h1")).to_have_text("linear-regression-model")
    expect(page.locator('#versions tr[data-version="1"]')).to_contain_text("promoted", timeout=90_000)
    expect(page.locator("[data-status]")).to_have_attribute("data-status", "serving", timeout=60_000)
    model = MLModel.objects.get(name="linear-regression-model")
    assert model.owner == admin and model.promoted_version.number == 1
    # Running is not answering: predictions go to a server once its health check recorded it.
    wait_for(lambda: model_serving_endpoints(model_id=model.pk), timeout=60, message="the server's endpoint recorded")

    page.fill("#id_input_data", "5.5")
    page.click("#predict-button")
    expect(page.locator("#prediction")).to_be_visible()
    shown = float(page.locator("#prediction").inner_text())
    token, _ = Token.objects.get_or_create(user=admin)
    api = requests.post(f"{live_server.url}/api/ml/models/{model.pk}/predict", json={"input_data": 5.5},
                        headers={"Authorization": f"Token {token.key}"}, timeout=10)
    assert api.status_code == 200, api.text
    assert shown == pytest.approx(float(api.json()["prediction"]), rel=1e-6)
    shot(page, "21-ml-model-predict")

    # A bad input shows the API's message for it.
    page.fill("#id_input_data", '"five"')
    page.click("#predict-button")
    expect(page.locator("#predict-error")).to_be_visible()

    page.click(".console-nav >> text=ML models")
    expect(page.locator("#result_list")).to_contain_text("linear-regression-model")
    expect(page.locator("#result_list")).to_contain_text("v1")
    shot(page, "22-ml-models")
